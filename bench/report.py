"""The Markdown summary and the plots of a benchmark run, from its JSON.

`python -m bench.report bench/results/<stamp>.json [out_dir]` writes them again.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

# The book's Flask + SQLAlchemy service, measured on this machine kind with the same load,
# 8 connections (docs/benchmarks.md, "Against the reference").
REFERENCE = {
    "spread": {"rate": 320, "p99": 33, "note": "p99 33 ms"},
    "hot": {"rate": 200, "p99": None, "note": "two thirds of the answers are 500s"},
    "read": {"rate": 1400, "p99": None, "note": ""},
    "history": {"rate": None, "p99": None, "note": "loads every past line per allocation"},
}
GOALS = {
    "throughput": "allocation at 8 connections >= 2x the reference (640 req/s)",
    "hot": "zero errors when every request targets one sku",
    "lag": "event-to-read-model p99 < 50 ms at steady load",
    "drain": "10,000 undelivered events drain in < 30 s",
    "history": "per-command cost does not grow with history",
}
READ_MODEL_HANDLER = "read_model.add_allocation"
SCENARIO_ORDER = ["spread", "hot", "scarce", "history-0", "history-20k", "history-100k", "read"]


# --- profiles -----------------------------------------------------------------------------------


def profile_summary(path: Path, top: int = 15) -> dict:
    """py-spy raw (collapsed) stacks: the top functions by own and by inclusive samples.

    Also a few buckets that tell where the time goes: waiting on PostgreSQL, sleeping in
    read-your-writes, the ORM building SQL, Celery/kombu publishing, Redis.
    """
    total = 0
    phases: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    buckets: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        buckets[bucket_of(frames)] += count
        phases[phase_of(stack)] += count
    if not total:
        return {"samples": 0}

    def pct(counter):
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)]

    return {
        "samples": total,
        "phases": pct(phases),
        "buckets": pct(buckets),
        "own": pct(own),
        # Inclusive shares of the service's own functions.
        "inclusive": pct(
            collections.Counter(
                {
                    name: n
                    for name, n in inclusive.items()
                    if any(m in name for m in ("(allocation/", "(readmodels/", "(notifications/"))
                }
            )
        ),
    }


# Where a sample is, in the service's own terms: the first label whose marker is on the stack.
PHASES = (
    ("web: read-your-writes wait (ring, checks of the deliveries)", "wait_for_deliveries"),
    ("wake-up after commit (doorbell, Celery publish)", "wake_workers"),
    ("web: token authentication", "authenticate"),
    ("web: the command's transaction (bus.handle)", "MessageBus.handle"),
    ("web: request parsing, DRF and Django around the view", "rest_framework"),
    ("worker: take due deliveries (one UPDATE ... RETURNING)", "take_due"),
    ("worker: lock deliveries run alone (SELECT ... FOR UPDATE)", "DjangoDeliveryRepository.lock"),
    ("worker: projections applied as sets (read-model SQL)", "readmodels/projections"),
    ("worker: notification bodies (Redis pipeline, email)", "notifications/"),
    ("worker: mark deliveries done", "mark_done"),
    ("worker: transactions of a step, follow-ups", "DeliveryRunner._run_group"),
    ("worker: transactions of a step, follow-ups", "DeliveryRunner._run_alone"),
    ("worker: Celery task machinery (receive, ack, trace)", "celery/"),
    ("web: gunicorn and Django around the view", "gunicorn/"),
)


def web_shape(stack: dict) -> str:
    threads = stack.get("web_threads", 0)
    return f"gthread x{threads}" if threads else "sync"


def phase_of(stack: str) -> str:
    for label, marker in PHASES:
        if marker in stack:
            return label
    return "other"


def bucket_of(frames: list[str]) -> str:
    """One label for a sample, from its innermost frames outward."""
    text = ";".join(frames)
    leaf = frames[-1]
    if "wait_for_deliveries" in text and "sleep" in leaf.lower():
        return "sleep in read-your-writes polling"
    if "wait_for_deliveries" in text and "wait_for_deliveries (" in leaf:
        return "sleep in read-your-writes polling"
    if "wait_for_deliveries" in text and "redis/" in text:
        return "read-your-writes wake-up (Redis BLPOP)"
    if "Connection.wait" in leaf or "_execute_send" in leaf or "wait_c" in leaf:
        if "wait_for_deliveries" in text:
            return "PostgreSQL round trips: read-your-writes checks"
        return "PostgreSQL round trips (waiting for the server)"
    if "kombu" in text or "deliver_task.delay" in text or "apply_async" in text:
        return "Celery publish (kombu)"
    if "redis/" in text:
        return "Redis client"
    if "django/db/models" in text or "django/db/backends" in text or "psycopg" in text:
        return "ORM and driver (building SQL, rows)"
    if "rest_framework" in text or "django/core/handlers" in text or "django/middleware" in text:
        return "Django/DRF request handling"
    if "gunicorn" in leaf:
        return "gunicorn (sockets, parsing)"
    if "celery" in text or "billiard" in text:
        return "Celery worker machinery"
    return "other Python"


# --- plots --------------------------------------------------------------------------------------


def plot_latency(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_scenario = collections.defaultdict(list)
    for run in results["runs"]:
        by_scenario[run["scenario"]].append(run)
    names = [s for s in SCENARIO_ORDER if s in by_scenario]
    names += [s for s in by_scenario if s not in names]
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for run in sorted(by_scenario[name], key=lambda r: r["connections"]):
            points = [(p, v / 1000) for p, v in run["wrk"]["percentiles_us"] if p <= 99.99]
            xs = [nines(p) for p, _ in points]
            ax.plot(
                xs,
                [v for _, v in points],
                label=f"{run['connections']} conn ({run['rate']:.0f} req/s)",
            )
        ticks = [50, 90, 99, 99.9, 99.99]
        ax.set_xticks([nines(t) for t in ticks], [f"p{t:g}" for t in ticks])
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("Latency distribution per scenario (wrk, closed loop)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def nines(p: float) -> float:
    """x position for percentile p: p50 -> 0.3, p90 -> 1, p99 -> 2, p99.9 -> 3."""
    import math

    return -math.log10(max(1e-6, 1 - p / 100))


def plot_throughput(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_scenario = collections.defaultdict(list)
    for run in results["runs"]:
        by_scenario[run["scenario"]].append(run)
    fig, (ax, ax_read) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, runs in by_scenario.items():
        runs = sorted(runs, key=lambda r: r["connections"])
        target = ax_read if name == "read" else ax
        target.plot(
            [r["connections"] for r in runs], [r["rate"] for r in runs], marker="o", label=name
        )
    ax.scatter([8], [REFERENCE["spread"]["rate"]], marker="*", s=150, c="k", zorder=5)
    ax.annotate(
        "reference spread",
        (8, REFERENCE["spread"]["rate"]),
        xytext=(10, 0),
        textcoords="offset points",
        fontsize=8,
    )
    ax.scatter([8], [REFERENCE["hot"]["rate"]], marker="x", s=80, c="k", zorder=5)
    ax.annotate(
        "reference hot (2/3 500s)",
        (8, REFERENCE["hot"]["rate"]),
        xytext=(10, -10),
        textcoords="offset points",
        fontsize=8,
    )
    ax_read.scatter([8], [REFERENCE["read"]["rate"]], marker="*", s=150, c="k", zorder=5)
    ax_read.annotate(
        "reference read",
        (8, REFERENCE["read"]["rate"]),
        xytext=(10, 0),
        textcoords="offset points",
        fontsize=8,
    )
    for a, title in ((ax, "POST /allocate"), (ax_read, "GET /allocations/<orderid>")):
        a.set_xscale("log", base=2)
        a.set_xticks([1, 8, 32], ["1", "8", "32"])
        a.set_xlabel("wrk connections")
        a.set_ylabel("requests/s")
        a.set_ylim(bottom=0)
        a.set_title(title)
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    stack = results["stack"]
    fig.suptitle(
        f"Throughput against connections (gunicorn -w {stack['web_workers']} "
        f"{web_shape(stack)}, "
        f"Celery prefork c={stack['worker_concurrency']})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_history(results: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results["runs"] if "history_lines" in r]
    if not runs:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for c in sorted({r["connections"] for r in runs}):
        mine = sorted((r for r in runs if r["connections"] == c), key=lambda r: r["history_lines"])
        xs = [r["history_lines"] for r in mine]
        ax1.plot(xs, [r["rate"] for r in mine], marker="o", label=f"{c} conn")
        ax2.plot(xs, [r["latency_ms"]["p99"] for r in mine], marker="o", label=f"{c} conn")
    ax1.set_ylabel("requests/s")
    ax1.set_ylim(bottom=0)
    ax2.set_ylabel("p99 latency (ms)")
    ax2.set_ylim(bottom=0)
    for a in (ax1, ax2):
        a.set_xlabel("past allocations of the sku")
        a.grid(True, alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle("Allocation against the sku's history")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_lag_and_drain(results: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lag = results.get("lag") or []
    drains = results.get("drain") or []
    if not lag and not drains:
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for run in lag:
        values = run["lag_ms"]["read_model_samples"]
        if values:
            ys = [100 * (i + 1) / len(values) for i in range(len(values))]
            ax1.plot(values, ys, label=f"{run['rate']:.0f} req/s paced")
    ax1.axvline(50, color="r", ls="--", lw=1, label="goal: p99 < 50 ms")
    ax1.axhline(99, color="grey", ls=":", lw=1)
    ax1.set_xscale("log")
    ax1.set_xlabel("event commit -> read-model delivery done (ms)")
    ax1.set_ylabel("% of events")
    ax1.set_title("Event-to-read-model lag (CDF)")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    for drain in drains:
        xs = [s[0] for s in drain["samples"]]
        ax2.plot(xs, [s[1] for s in drain["samples"]], label=f"{drain['mode']}: pending deliveries")
    if drains:
        goal = 30 * drains[0]["events"] / 10000
        ax2.axvline(goal, color="r", ls="--", lw=1, label=f"goal: {goal:g} s (30 s per 10,000)")
    ax2.set_xlabel("seconds since the backlog became due")
    ax2.set_ylabel("pending deliveries")
    ax2.set_title(f"Draining {drains[0]['events'] if drains else 0} undelivered events")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --- the Markdown -------------------------------------------------------------------------------


def fmt_statuses(statuses: dict) -> str:
    return ", ".join(f"{code}: {n}" for code, n in statuses.items()) or "-"


def cpu_cell(run: dict) -> str:
    per = run["cpu_ms_per_request"]
    parts = [f"{g} {per[g]:.1f}" for g in ("web", "worker", "postgres", "redis", "wrk") if g in per]
    return ", ".join(parts)


SERVICE_GROUPS = ("web", "worker", "postgres", "redis", "beat")


def ceiling(run: dict, cores: int) -> float:
    """The rate at which the service's own CPU per request would fill the machine's cores.

    Robust to other users of the machine (it uses CPU per request, not the rate): what the
    run would reach on an otherwise idle box with the load generator elsewhere, if nothing
    but CPU limited it.
    """
    per = sum(run["cpu_ms_per_request"].get(g, 0) for g in SERVICE_GROUPS)
    return 1000 * cores / per if per else float("nan")


def other_cpu(run: dict) -> str:
    cpu = run["cpu"]
    share = cpu["cpu_s"].get("other", 0) / max(0.01, cpu["capacity_cpu_s"])
    return f"{100 * share:.0f}%"


def write(json_path: Path, out_dir: Path) -> Path:
    results = json.loads(Path(json_path).read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    # Profiles: summarised again from the raw stacks when they are there (labels may change).
    for name in (results.get("profile") or {}).get("summary", {}):
        raw = out_dir / "profiles" / f"{name}.txt"
        if raw.exists():
            results["profile"]["summary"][name] = profile_summary(raw)
    plots = {}
    plot_latency(results, out_dir / "latency.png")
    plots["latency"] = "latency.png"
    plot_throughput(results, out_dir / "throughput.png")
    plots["throughput"] = "throughput.png"
    if plot_history(results, out_dir / "history.png"):
        plots["history"] = "history.png"
    if plot_lag_and_drain(results, out_dir / "lag-drain.png"):
        plots["lag"] = "lag-drain.png"
    summary = out_dir / "summary.md"
    summary.write_text(markdown(results, plots, json_path))
    return summary


def find(results: dict, scenario: str, connections: int) -> dict | None:
    return next(
        (
            r
            for r in results["runs"]
            if r["scenario"] == scenario and r["connections"] == connections
        ),
        None,
    )


def markdown(results: dict, plots: dict, json_path: Path) -> str:
    m, v, s = results["machine"], results.get("versions", {}), results.get("stack", {})
    plan = results["plan"]
    lines = [
        f"# Benchmark run {Path(json_path).stem}",
        "",
        f"Plan `{plan['name']}`: {plan['seconds']:g} s per wrk run, connections "
        f"{', '.join(map(str, plan['connections']))}; wall time {results.get('wall_seconds')} s. "
        f"Raw results: `{Path(json_path).name}`.",
        "",
        "## Machine and versions",
        "",
        f"- Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu_model']}; "
        f"{m['os']}, kernel {m['kernel']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- PostgreSQL settings: "
        + ", ".join(f"{k}={val}" for k, val in results.get("postgres_settings", {}).items()),
        f"- Code: commit {results.get('code', {}).get('commit', '?')[:10]} "
        f"({results.get('code', {}).get('subject', '')})"
        + (
            "; uncommitted changes to production code: "
            + ", ".join(f"`{x}`" for x in results["code"]["uncommitted_production_changes"])
            if results.get("code", {}).get("uncommitted_production_changes")
            else ""
        ),
        f"- Web: `{s.get('web')}` ({s.get('web_workers')} workers, {web_shape(s)})",
        f"- Worker: `{s.get('worker')}`; beat running (the outbox sweeper)",
        f"- Database `{s.get('database')}`, {s.get('redis')}",
        "- Settings: " + ", ".join(f"`{k}={val}`" for k, val in s.get("env", {}).items()),
        "",
    ]

    # Headline: ours against the reference, 8 connections.
    lines += ["## Headline (8 connections) against the reference", ""]
    lines += [
        "| scenario | ours req/s | ours p50 / p99 (ms) | ours statuses | backlog | "
        "CPU ceiling req/s | other users' CPU | reference (Flask + SQLAlchemy) |",
        "|---|---:|---|---|---|---:|---:|---|",
    ]
    for name, ref_key in (
        ("spread", "spread"),
        ("hot", "hot"),
        ("scarce", None),
        ("history-0", "history"),
        ("history-20k", "history"),
        ("history-100k", "history"),
        ("read", "read"),
    ):
        run = find(results, name, 8)
        if run is None:
            continue
        ref = REFERENCE.get(ref_key or "", {})
        ref_text = " ".join(
            x for x in (f"{ref['rate']} req/s" if ref.get("rate") else "", ref.get("note", "")) if x
        )
        backlog = run["backlog"]["verdict"] if run["mode"] == "allocate" else "-"
        lines.append(
            f"| {name} | {run['rate']:.0f} | {run['latency_ms']['p50']:.1f} / "
            f"{run['latency_ms']['p99']:.1f} | {fmt_statuses(run['statuses'])} | {backlog} | "
            f"{ceiling(run, results['machine']['cores']):.0f} | {other_cpu(run)} | "
            f"{ref_text or '-'} |"
        )
    lines.append("")
    lines += [
        "Run with `make bench` (this plan: `full`) or `make bench-quick`; each wrk run is "
        "`wrk -t 2 -c <conns> -d <s>s --timeout 10s -s bench/lua/load.lua <url> -- <mode> "
        "<token> <prefix> <sku or prefix> <count>` (1 thread at 1 connection); the exact argv "
        "of every run is in the JSON.",
        "",
    ]

    lines += goals_section(results)

    cores = results["machine"]["cores"]
    lines += ["## Every run", ""]
    lines += [
        "Throughput is completed requests over the run. Latency is wrk's (closed loop: each "
        "connection sends its next request when the previous answer arrives). Backlog is the "
        "count of pending deliveries sampled every 0.5 s: before, the highest, after the run, "
        "and the time the worker needed to empty it once wrk stopped; *flat* means it did not "
        "grow beyond what the open requests hold (3 per connection + 10). CPU is milliseconds "
        "per request by process group; *other* is CPU used by other users of the machine "
        "during the run, as a share of its two cores. *CPU ceiling* is the rate at which the "
        "service's own CPU per request (web + worker + PostgreSQL + Redis + beat) would fill "
        "the cores: the figure to compare across runs when the machine was shared.",
        "",
        "| scenario | conns | req/s | p50 | p90 | p99 | p99.9 | max (ms) | statuses | outcomes "
        "| backlog before/max/after (settle s) | CPU ms/request | CPU ceiling req/s | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|",
    ]
    for run in results["runs"]:
        lat, b = run["latency_ms"], run["backlog"]
        outcomes = run.get("outcomes", {})
        out_text = (
            ", ".join(
                f"{k} {val}" for k, val in outcomes.items() if k != "out_of_stock_202_seen_by_wrk"
            )
            or "-"
        )
        errors = {k: val for k, val in run["socket_errors"].items() if val}
        status_text = fmt_statuses(run["statuses"]) + (
            f"; socket errors {errors}" if errors else ""
        )
        lines.append(
            f"| {run['scenario']} | {run['connections']} | {run['rate']:.1f} | {lat['p50']:.1f} | "
            f"{lat['p90']:.1f} | {lat['p99']:.1f} | {lat['p99.9']:.1f} | {lat['max']:.0f} | "
            f"{status_text} | {out_text} | {b['before']}/{b['max']}/{b['after']} "
            f"({b['settle']['seconds']}) {b['verdict']} | {cpu_cell(run)} | "
            f"{ceiling(run, cores):.0f} | {other_cpu(run)} |"
        )
    lines.append("")

    lag = results.get("lag") or []
    if lag:
        lines += [
            "## Event-to-read-model lag",
            "",
            "Measured in the database: for each `Allocated` event of the paced run, its "
            "delivery's `done_at` (set by the worker in the transaction that applies the "
            "projection) minus the event's `occurred_at` (set in the web transaction that "
            "commits it). Load: wrk with 4 connections, each pausing between requests "
            "(`BENCH_DELAY_MS`).",
            "",
            "| paced load | req/s | handler | events | p50 | p90 | p95 | p99 | max (ms) | "
            "backlog | HTTP p99 (ms) |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for run in lag:
            for handler, st in run["lag_ms"]["by_handler"].items():
                lines.append(
                    f"| {run['scenario']} | {run['rate']:.1f} | `{handler.rsplit('.', 1)[-1]}` | "
                    f"{st['events']} | {st['p50']} | {st['p90']} | {st['p95']} | {st['p99']} | "
                    f"{st['max']} | {run['backlog']['verdict']} | {run['latency_ms']['p99']} |"
                )
        lines.append("")

    drains = results.get("drain") or []
    if drains:
        lines += [
            "## Draining a backlog",
            "",
            "The backlog is made through the bus with its after-commit dispatch lost "
            "(`bootstrap(wake=[].extend)`, two processes), with beat stopped; then every "
            "pending delivery is made due and the clock starts. *sweep_outbox*: `manage.py "
            "sweep_outbox --until-empty` claims all of it at once (beat runs too); *beat*: beat "
            "alone at its production settings.",
            "",
            "| mode | events | deliveries | seconds | events/s | deliveries/s | "
            "sweep_outbox exited at (s) | CPU s: worker / postgres / other |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for d in drains:
            cpu = d["cpu"]["cpu_s"]
            lines.append(
                f"| {d['mode']} | {d['events']} | {d['deliveries']} | {d['seconds']} | "
                f"{d['events_per_s']} | {d['deliveries_per_s']} | "
                f"{d.get('sweep_outbox_exit_s') or '-'} | {cpu.get('worker', 0):.1f} / "
                f"{cpu.get('postgres', 0):.1f} / {cpu.get('other', 0):.1f} |"
            )
        lines.append("")

    statements = results.get("statements")
    if statements:
        lines += [
            "## SQL statements per allocation",
            "",
            "Counted with `connection.execute_wrapper` in a Django process on the bench "
            "database after the load (bench/querycount.py), 30 times each, the machine "
            "otherwise idle; time is the median wall time of the phase in one process.",
            "",
            "| phase | statements | by kind | median ms |",
            "|---|---:|---|---:|",
        ]
        for phase, st in statements.items():
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(st["statements"].items()))
            lines.append(f"| {phase} | {st['total']} | {kinds} | {st['median_ms']} |")
        lines.append("")

    lines += ["## Memory (RSS, MiB)", ""]
    lines += [
        "| when | web total | web workers | Celery worker total | pool processes |",
        "|---|---:|---|---:|---|",
    ]
    for key, label in (
        ("memory_start", "start"),
        ("memory_after_warmup", "after warm-up"),
        ("memory_end", "end"),
    ):
        mem = results.get(key)
        if mem:
            lines.append(
                f"| {label} | {mem['web_total_mib']} | {mem['web_workers_mib']} | "
                f"{mem['worker_total_mib']} | {mem['worker_pool_mib']} |"
            )
    lines.append("")

    checks = results.get("checks")
    if checks:
        lines += [
            "## Checks after the run",
            "",
            f"- Batches over-allocated (`allocated_quantity > purchased_quantity`): "
            f"{checks['over_allocated_batches']}",
            f"- Batches whose `allocated_quantity` differs from the sum of their allocation rows: "
            f"{len(checks['batches_whose_counter_differs_from_their_lines'])}",
            f"- `check_readmodels` exit status: {checks['check_readmodels_exit']}",
            f"- Pending deliveries at the end: {checks['pending_deliveries']}; dead: "
            f"{checks['dead_deliveries']}",
            "- Rows: " + ", ".join(f"{k} {val}" for k, val in checks["row_counts"].items()),
            f"- Events in the database that the benchmark did not cause: "
            f"{checks.get('events_not_written_by_the_bench', '-')}",
            f"- **{'PASSED' if checks['passed'] else 'FAILED'}**",
            "",
        ]

    profile = results.get("profile")
    if profile:
        lines += [
            "## Profiles (py-spy)",
            "",
            f"py-spy recorded two gunicorn workers and both Celery pool processes (100 Hz, "
            f"non-blocking) during an extra spread run at 8 connections "
            f"({profile['run']['rate']:.0f} req/s, not quoted above). Files: "
            + ", ".join(f"`profiles/{f}`" for f in profile["files"])
            + ". Share of samples by where the time goes:",
            "",
        ]
        for name, summary in profile["summary"].items():
            if not summary.get("samples"):
                continue
            lines += [
                f"**{name}** ({summary['samples']} samples; py-spy leaves out idle time, so "
                "this is the time the process was busy or waiting on a socket)",
                "",
                "| phase | share |",
                "|---|---:|",
                *(f"| {label} | {share}% |" for label, share in summary.get("phases", [])),
                "",
                "By kind of work: "
                + "; ".join(f"{label} {share}%" for label, share in summary["buckets"])
                + ".",
                "",
                "Hottest functions (own samples): "
                + "; ".join(f"`{label}` {share}%" for label, share in summary["own"][:8])
                + ".",
                "",
            ]

    lines += ["## Plots", ""]
    for name, file in plots.items():
        lines.append(f"![{name}]({file})")
        lines.append("")
    return "\n".join(lines)


def goals_section(results: dict) -> list[str]:
    lines = ["## Against the quality bars (docs/benchmarks.md)", ""]
    spread = find(results, "spread", 8)
    hot = find(results, "hot", 8)
    cal = results.get("calibration") or {}
    if "pgbench_tps" in cal:
        lines.append(
            f"- Calibration: pgbench of the allocation transaction alone (bench/sql/allocate.sql,"
            f" {cal['clients']} clients) {cal['pgbench_tps']:.0f} per second; spread at 8 "
            f"connections is **{cal.get('spread_8_percent_of_pgbench')}%** of it"
        )
    if spread:
        cpu = spread["cpu_ms_per_request"]
        stack_cpu = sum(cpu.get(k, 0) for k in ("web", "worker", "postgres", "redis", "beat"))
        lines.append(
            f"- CPU per allocation, spread at 8 connections: {stack_cpu:.1f} ms (web "
            f"{cpu.get('web', 0)}, worker {cpu.get('worker', 0)}, PostgreSQL "
            f"{cpu.get('postgres', 0)}, Redis {cpu.get('redis', 0)}; goal <= 6 ms): "
            f"**{'met' if stack_cpu <= 6 else 'not met'}**"
        )
        ok = spread["rate"] >= 2 * REFERENCE["spread"]["rate"]
        lines.append(
            f"- Throughput: spread at 8 connections {spread['rate']:.0f} req/s = "
            f"{spread['rate'] / REFERENCE['spread']['rate']:.2f}x the reference "
            f"(goal >= 2x): **{'met' if ok else 'not met'}**"
        )
    hot_runs = [r for r in results["runs"] if r["scenario"] == "hot"]
    if hot_runs:
        errors = sum(
            n for r in hot_runs for code, n in r["statuses"].items() if not code.startswith("2")
        ) + sum(v for r in hot_runs for v in r["socket_errors"].values())
        lines.append(
            f"- Hot sku: {errors} errors over {sum(r['wrk']['requests'] for r in hot_runs)} "
            f"requests (goal 0): **{'met' if errors == 0 else 'not met'}**"
            + (f"; {hot['rate']:.0f} req/s at 8 connections" if hot else "")
        )
    hist = [r for r in results["runs"] if "history_lines" in r and r["connections"] == 8]
    if len(hist) >= 2:
        hist.sort(key=lambda r: r["history_lines"])
        first, last = hist[0], hist[-1]
        web_first = first["cpu_ms_per_request"].get("web", 0)
        web_last = last["cpu_ms_per_request"].get("web", 0)
        pg_first = first["cpu_ms_per_request"].get("postgres", 0)
        pg_last = last["cpu_ms_per_request"].get("postgres", 0)
        lines.append(
            f"- History: at 8 connections {first['rate']:.0f} req/s with "
            f"{first['history_lines']} past lines, {last['rate']:.0f} req/s with "
            f"{last['history_lines']}; web CPU {web_first:.1f} -> {web_last:.1f} ms/request, "
            f"PostgreSQL {pg_first:.1f} -> {pg_last:.1f} ms/request"
        )
    for run in results.get("lag") or []:
        st = run["lag_ms"]["by_handler"].get(READ_MODEL_HANDLER)
        if st:
            lines.append(
                f"- Lag at {run['rate']:.0f} req/s paced (backlog {run['backlog']['verdict']}): "
                f"p50 {st['p50']} / p95 {st['p95']} / p99 {st['p99']} ms (goal p99 < 50 ms): "
                f"**{'met' if st['p99'] < 50 else 'not met'}**"
            )
    for d in results.get("drain") or []:
        met = d["finished"] and d["seconds"] < 30 * d["events"] / 10000
        lines.append(
            f"- Drain ({d['mode']}): {d['events']} events / {d['deliveries']} deliveries in "
            f"{d['seconds']} s (goal < 30 s for 10,000 events): "
            f"**{'met' if met else 'not met'}**"
            + ("" if d["events"] == 10000 else " (scaled to the backlog's size)")
        )
    if results.get("checks"):
        passed = "passed" if results["checks"]["passed"] else "FAILED"
        lines.append(f"- Consistency after the run: **{passed}**")
    busy = [
        r
        for r in results["runs"]
        if r["cpu"]["cpu_s"].get("other", 0) > 0.15 * r["cpu"]["capacity_cpu_s"]
    ]
    if busy:
        lines.append(
            f"- Noise: in {len(busy)} of {len(results['runs'])} runs other users of the machine "
            f"took more than 15% of its CPU (column *other*); those figures are low."
        )
    lines.append("")
    return lines


if __name__ == "__main__":
    src = Path(sys.argv[1])
    dest = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_suffix("")
    print(write(src, dest))
