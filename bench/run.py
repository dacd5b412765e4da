"""The benchmark suite: `python -m bench.run [--quick]` (or `make bench` / `make bench-quick`).

It starts the real stack (gunicorn, a prefork Celery worker and beat) on its own PostgreSQL
database and a private redis-server, loads it with wrk from a separate process, and writes
bench/results/<timestamp>.json, then the Markdown summary and the plots (bench/report.py)
under bench/results/<timestamp>/. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import data, metrics, report
from bench.querycount import count_queries
from bench.stack import (
    ARTIFACTS,
    BENCH_ENV,
    DATABASE_PREFIX,
    WEB_THREADS,
    WEB_WORKERS,
    WORKER_CONCURRENCY,
    bench_stack,
    drop_database,
    private_redis,
    web_pids,
    worker_pids,
)
from bench.wrk import percentile, run_wrk
from tests.e2e.harness import ARTIFACTS_ROOT, BIN, ROOT, Stack

RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Plan:
    name: str
    seconds: float  # per wrk run
    connections: tuple[int, ...]  # every scenario runs at each of these
    history_levels: tuple[int, ...]
    read_rows: int
    lag_seconds: float
    lag_loads: tuple[float, ...]  # paced rates, as fractions of spread's rate at 8 connections
    drain_events: int
    drain_beat_only: bool  # also drain a second backlog with beat alone (production settings)
    no_wait_diagnostic: bool  # one spread run with read-your-writes off
    profile_seconds: float  # 0: no py-spy run
    quiet_wait: float  # seconds to wait, at most, for other users of the machine to go quiet


FULL = Plan(
    name="full",
    seconds=20,
    connections=(1, 8, 32),
    history_levels=(0, 20_000, 100_000),
    read_rows=100_000,
    lag_seconds=40,
    lag_loads=(0.25, 0.5),
    drain_events=10_000,
    drain_beat_only=True,
    no_wait_diagnostic=True,
    profile_seconds=20,
    quiet_wait=20,
)
QUICK = Plan(
    name="quick",
    seconds=6,
    connections=(1, 8, 32),
    history_levels=(0, 100_000),
    read_rows=100_000,
    lag_seconds=15,
    lag_loads=(0.5,),
    drain_events=2_000,
    drain_beat_only=False,
    no_wait_diagnostic=False,
    profile_seconds=0,
    quiet_wait=15,
)

QUIET_THRESHOLD = 0.25  # the machine counts as quiet below 25% busy (our idle stack included)
SPREAD_SKUS = 50
SETTLE_TIMEOUT = 120.0


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", flush=True)


class Bench:
    def __init__(self, plan: Plan, stack: Stack, redis_server, out: dict):
        self.plan, self.stack, self.redis = plan, stack, redis_server
        self.out = out
        self.api = stack.api
        self.url = f"http://127.0.0.1:{stack.port}"
        self.conn = stack.connect()
        worker_name = stack.worker.argv[stack.worker.argv.index("-n") + 1].split("@")[0]
        self.groups = metrics.Groups(
            web_port=stack.port,
            redis_port=redis_server.port,
            database=stack.config.database,
            worker_name=worker_name,
        )
        self.run_no = 0

    # --- one measured wrk run -----------------------------------------------------------------

    def measure(
        self,
        scenario: str,
        connections: int,
        mode: str,
        target: str,
        count: int = 1,
        seconds: float | None = None,
        delay_ms: int = 0,
        extra: dict | None = None,
        record: bool = True,
    ) -> dict:
        seconds = seconds or self.plan.seconds
        self.run_no += 1
        prefix = f"r{self.run_no}"
        quiet = metrics.wait_for_quiet(QUIET_THRESHOLD, self.plan.quiet_wait)
        pending_before = metrics.pending_deliveries(self.conn)
        sampler = metrics.BacklogSampler(self.stack.config.database, self.redis.client)
        meter = metrics.CpuMeter(self.groups)
        started_at = datetime.now(UTC)
        sampler.start()
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        meter.start()
        result = run_wrk(
            self.url, connections, seconds, mode, self.api.token, prefix, target, count, delay_ms
        )
        cpu = meter.stop(
            wrk=cpu_seconds(resource.getrusage(resource.RUSAGE_CHILDREN))
            - cpu_seconds(children_before)
        )
        samples = sampler.stop()
        ended_at = datetime.now(UTC)
        pending_after = metrics.pending_deliveries(self.conn)
        settle = self.settle()
        run = {
            "scenario": scenario,
            "connections": connections,
            "mode": mode,
            "target": target,
            "target_count": count,
            "prefix": prefix,
            "seconds": seconds,
            "delay_ms": delay_ms,
            "started_at": started_at.isoformat(),
            "ended_at": ended_at.isoformat(),
            "quiet": quiet,
            "wrk": result,
            "rate": round(result["rate"], 1),
            "latency_ms": {
                p: round(percentile(result, q), 2)
                for p, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
            }
            | {"max": round(result["latency_us"]["max"] / 1000, 2)},
            "statuses": result["statuses"],
            "socket_errors": {k: v for k, v in result["errors"].items() if k != "status"},
            "cpu": cpu,
            "cpu_ms_per_request": {
                group: round(1000 * s / max(1, result["requests"]), 3)
                for group, s in cpu["cpu_s"].items()
            },
            "backlog": self.backlog_summary(
                pending_before, pending_after, samples, connections, settle
            ),
            **(extra or {}),
        }
        if mode == "allocate":
            run["outcomes"] = self.outcomes(prefix)
        if record:
            self.out["runs"].append(run)
        b = run["backlog"]
        log(
            f"{scenario:>14} c={connections:<3} {run['rate']:7.1f} req/s  "
            f"p50 {run['latency_ms']['p50']:7.1f} p99 {run['latency_ms']['p99']:7.1f} ms  "
            f"{run['statuses']}  backlog {b['before']}->{b['max']}->{b['after']} "
            f"({b['verdict']})  other CPU {cpu['cpu_s'].get('other', 0):.1f}s"
        )
        return run

    def settle(self) -> dict:
        """Wait for the backlog to empty after a run: how long the worker lagged behind.

        Empty twice, 0.3 s apart: a request still in gunicorn when wrk stopped may commit
        just after a first look.
        """
        start = time.monotonic()
        empty_in_a_row = 0
        while time.monotonic() - start < SETTLE_TIMEOUT:
            empty = (
                metrics.pending_deliveries(self.conn) == 0 and self.redis.client.llen("celery") == 0
            )
            empty_in_a_row = empty_in_a_row + 1 if empty else 0
            if empty_in_a_row == 2:
                return {"settled": True, "seconds": round(time.monotonic() - start - 0.3, 2)}
            time.sleep(0.3 if empty else 0.1)
        return {"settled": False, "seconds": round(time.monotonic() - start, 2)}

    @staticmethod
    def backlog_summary(before, after, samples, connections, settle) -> dict:
        pending = [s[1] for s in samples] or [before]
        queued = [s[2] for s in samples] or [0]
        # In flight, each open request holds up to three deliveries (and a few tasks queued):
        # a backlog within that is the pipeline, not a queue building up.
        in_flight = 3 * connections + 10
        slope = metrics.slope(samples)
        growing = (after - before) > in_flight or slope > 2.0
        return {
            "before": before,
            "after": after,
            "max": max(pending),
            "mean": round(statistics.fmean(pending), 1),
            "slope_per_s": round(slope, 2),
            "queued_tasks_max": max(queued),
            "in_flight_bound": in_flight,
            "verdict": "growing" if growing else "flat",
            "settle": settle,
            "samples": samples,
        }

    def outcomes(self, prefix: str) -> dict:
        """Allocated and OutOfStock events this run's orders caused, from the event log."""
        rows = self.conn.execute(
            "SELECT type, count(*) FROM allocation_storedevent "
            "WHERE type = 'Allocated' AND payload->>'orderid' LIKE %s GROUP BY type",
            (f"{prefix}-%",),
        ).fetchall()
        found = dict(rows)
        # Deliveries done more than 5 s after their event: their broker message was lost and
        # the sweeper took them, or they queued behind a backlog; and any not done yet.
        late, not_done = self.conn.execute(
            "SELECT count(*) FILTER (WHERE d.done_at - e.occurred_at > interval '5 seconds'), "
            "count(*) FILTER (WHERE d.done_at IS NULL) "
            "FROM allocation_delivery d JOIN allocation_storedevent e "
            "ON e.id = d.event_id WHERE e.payload->>'orderid' LIKE %s",
            (f"{prefix}-%",),
        ).fetchone()
        return {
            "allocated": found.get("Allocated", 0),
            "deliveries_done_over_5s_after_event": late,
            "deliveries_not_done": not_done,
        }

    # --- the scenarios --------------------------------------------------------------------------

    def setup(self) -> None:
        log("setting up: batches through the API, history through bulk SQL")
        spread = [f"SPREAD-{i}" for i in range(SPREAD_SKUS)]
        data.add_batches(self.api, spread)
        data.add_batches(self.api, ["HOT"])
        history = {}
        for level in self.plan.history_levels:
            sku = f"HIST-{level}"
            data.add_batches(self.api, [sku])
            took = data.add_history(self.conn, sku, level, f"h{level}-") if level else 0.0
            history[sku] = {"lines": level, "seconds": round(took, 2)}
            log(f"history {sku}: {level} past allocations in {took:.1f}s")
        if self.plan.read_rows not in self.plan.history_levels:
            sku = "READ"
            data.add_batches(self.api, [sku])
            data.add_history(self.conn, sku, self.plan.read_rows, f"h{self.plan.read_rows}-")
        self.out["setup"] = {"spread_skus": SPREAD_SKUS, "history": history}

    def warm_up(self) -> None:
        log("warming up (3 s at 8 connections, not recorded)")
        self.measure("warmup", 8, "allocate", "SPREAD-", SPREAD_SKUS, seconds=3, record=False)

    def spread(self) -> None:
        for c in self.plan.connections:
            self.measure("spread", c, "allocate", "SPREAD-", SPREAD_SKUS)

    def hot(self) -> None:
        for c in self.plan.connections:
            self.measure("hot", c, "allocate", "HOT")

    def scarce(self) -> None:
        """One sku per run whose stock covers about 40% of the requests spread managed."""
        for c in self.plan.connections:
            spread = self.find("spread", c)
            stock = max(20, int(0.4 * spread["rate"] * self.plan.seconds))
            sku = f"SCARCE-{c}"
            data.add_batches(self.api, [sku], qty=stock)
            run = self.measure("scarce", c, "allocate", sku, extra={"stock": stock})
            oos = self.conn.execute(
                "SELECT count(*) FROM allocation_storedevent WHERE type = 'OutOfStock' "
                "AND sku = %s",
                (sku,),
            ).fetchone()[0]
            run["outcomes"]["out_of_stock"] = oos
            run["outcomes"]["out_of_stock_202_seen_by_wrk"] = run["wrk"]["out_of_stock_202"]

    def history(self) -> None:
        for level in self.plan.history_levels:
            for c in self.plan.connections:
                self.measure(
                    f"history-{level // 1000}k" if level else "history-0",
                    c,
                    "allocate",
                    f"HIST-{level}",
                    extra={"history_lines": level},
                )

    def read(self) -> None:
        rows = self.conn.execute("SELECT count(*) FROM readmodels_orderallocation").fetchone()[0]
        for c in self.plan.connections:
            self.measure(
                "read",
                c,
                "read",
                f"h{self.plan.read_rows}-",
                count=self.plan.read_rows,
                extra={"read_model_rows": rows},
            )

    def without_waiting(self) -> None:
        """Diagnostic: spread at 8 connections with read-your-writes off (timeout 0).

        The web then answers right after its commit, so this shows what the web side alone
        can do, and whether the worker keeps up with it (the backlog, and how long it takes
        to empty afterwards). Not a figure to quote as sustained.
        """
        self.stack.stop("web")
        self.stack.env["ALLOCATION_READ_YOUR_WRITES_TIMEOUT"] = "0"
        try:
            self.stack.start("web")
            self.measure(
                "spread-no-wait",
                8,
                "allocate",
                "SPREAD-",
                SPREAD_SKUS,
                extra={"diagnostic": "ALLOCATION_READ_YOUR_WRITES_TIMEOUT=0"},
            )
        finally:
            self.stack.stop("web")
            self.stack.env["ALLOCATION_READ_YOUR_WRITES_TIMEOUT"] = BENCH_ENV[
                "ALLOCATION_READ_YOUR_WRITES_TIMEOUT"
            ]
            self.stack.start("web")

    def find(self, scenario: str, connections: int) -> dict:
        return next(
            r
            for r in self.out["runs"]
            if r["scenario"] == scenario and r["connections"] == connections
        )

    def lag(self) -> None:
        """Event-to-read-model lag at paced loads below what spread sustained."""
        base = self.find("spread", 8) if 8 in self.plan.connections else self.out["runs"][0]
        single = self.find("spread", 1) if 1 in self.plan.connections else base
        self.out["lag"] = []
        connections = 4
        for load in self.plan.lag_loads:
            target = load * base["rate"]
            # Each connection sends, waits for the answer, then pauses: rate = c / (latency + d).
            latency_s = single["wrk"]["latency_us"]["mean"] / 1e6
            delay_ms = max(1, int(1000 * (connections / target - latency_s)))
            run = self.measure(
                f"lag-{int(load * 100)}%",
                connections,
                "allocate",
                "SPREAD-",
                SPREAD_SKUS,
                seconds=self.plan.lag_seconds,
                delay_ms=delay_ms,
                extra={"target_rate": round(target, 1), "load_fraction": load},
                record=False,
            )
            run["lag_ms"] = self.lag_of(run["prefix"])
            self.out["lag"].append(run)
            lag = run["lag_ms"]["by_handler"].get(data.READ_MODEL_HANDLER, {})
            log(
                f"lag at {run['rate']:.1f} req/s: read model p50 {lag.get('p50')} "
                f"p95 {lag.get('p95')} p99 {lag.get('p99')} ms"
            )

    def lag_of(self, prefix: str) -> dict:
        """done_at (the delivery's done-mark) minus occurred_at (the event's), per handler."""
        rows = self.conn.execute(
            "SELECT d.handler, extract(epoch FROM d.done_at - e.occurred_at) * 1000 "
            "FROM allocation_delivery d JOIN allocation_storedevent e ON e.id = d.event_id "
            "WHERE e.type = 'Allocated' AND e.payload->>'orderid' LIKE %s "
            "AND d.status = 'done'",
            (f"{prefix}-%",),
        ).fetchall()
        by_handler: dict[str, list[float]] = {}
        for handler, ms in rows:
            by_handler.setdefault(handler, []).append(float(ms))
        summary = {}
        for handler, values in by_handler.items():
            values.sort()
            summary[handler] = {
                "events": len(values),
                **{f"p{p}": round(quantile(values, p / 100), 2) for p in (50, 90, 95, 99)},
                "max": round(values[-1], 2),
            }
        read_model = sorted(by_handler.get(data.READ_MODEL_HANDLER, []))
        return {
            "method": "allocation_delivery.done_at - allocation_storedevent.occurred_at",
            "by_handler": summary,
            "read_model_samples": [round(v, 2) for v in read_model],
        }

    def drain(self, mode: str) -> dict:
        """A backlog of undelivered events (dispatch lost), then sweeper + workers until done.

        mode "sweep_outbox": `manage.py sweep_outbox --until-empty` claims everything due at
        once (beat runs too); "beat": beat alone, at its production interval and batch size.
        """
        events = self.plan.drain_events
        self.stack.stop("beat")  # no sweeper while the backlog is made
        t = time.monotonic()
        prefix = f"drain-{mode}"
        lost = data.make_backlog(self.stack, events, SPREAD_SKUS, "SPREAD-", prefix)
        made_in = time.monotonic() - t
        pending = metrics.pending_deliveries(self.conn)
        log(f"drain ({mode}): {events} events, {lost} deliveries lost, made in {made_in:.1f}s")
        quiet = metrics.wait_for_quiet(QUIET_THRESHOLD, self.plan.quiet_wait)
        meter = metrics.CpuMeter(self.groups)
        self.conn.execute(
            "UPDATE allocation_delivery SET next_attempt_at = now() WHERE status = 'pending'"
        )
        samples = []
        meter.start()
        t0 = time.monotonic()
        self.stack.start("beat", wait=False)
        sweeper = None
        if mode == "sweep_outbox":
            sweeper = subprocess.Popen(
                [str(BIN / "python"), "manage.py", "sweep_outbox", "--until-empty"],
                cwd=ROOT,
                env=self.stack.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        sweeper_done = None
        while True:
            now = time.monotonic() - t0
            left = metrics.pending_deliveries(self.conn)
            samples.append((round(now, 2), left, self.redis.client.llen("celery")))
            if sweeper is not None and sweeper_done is None and sweeper.poll() is not None:
                sweeper_done = round(now, 2)
            if left == 0 or now > 600:
                break
            time.sleep(0.25)
        took = time.monotonic() - t0
        cpu = meter.stop()
        if sweeper is not None:
            sweeper.wait(60)
        self.stack.wait_ready("beat")
        result = {
            "mode": mode,
            "events": events,
            "deliveries": pending,
            "lost_at_commit": lost,
            "backlog_made_in_s": round(made_in, 1),
            "quiet": quiet,
            "seconds": round(took, 2),
            "finished": left == 0,
            "events_per_s": round(events / took, 1),
            "deliveries_per_s": round(pending / took, 1),
            "sweep_outbox_exit_s": sweeper_done,
            "cpu": cpu,
            "samples": samples,
            "settings": {
                k: BENCH_ENV[k]
                for k in (
                    "ALLOCATION_SWEEP_INTERVAL",
                    "ALLOCATION_DELIVERY_BATCH",
                    "ALLOCATION_DELIVERY_LEASE",
                )
            },
        }
        log(
            f"drain ({mode}): {pending} deliveries in {took:.1f}s = "
            f"{result['deliveries_per_s']} deliveries/s, {result['events_per_s']} events/s"
        )
        return result

    def profile(self) -> None:
        """py-spy on a gunicorn worker and a Celery pool process during a spread run."""
        out_dir = Path(self.out["artifacts_dir"]) / "profiles"
        out_dir.mkdir(parents=True, exist_ok=True)
        seconds = self.plan.profile_seconds
        _, web = web_pids(self.stack)
        _, pool = worker_pids(self.stack)
        targets = {"web-1": web[0], "web-2": web[1], "worker-1": pool[0], "worker-2": pool[1]}
        pyspy = str(BIN / "py-spy")
        procs = []
        for name, pid in targets.items():
            fmt, ext = ("flamegraph", "svg") if name.endswith("-1") else ("raw", "txt")
            argv = [pyspy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "100"]
            argv += ["-f", fmt, "-o", str(out_dir / f"{name}.{ext}"), "--nonblocking"]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        # Also raw stacks of the -1 processes, for the text summary.
        for name in ("web-1", "worker-1"):
            argv = [pyspy, "record", "-p", str(targets[name]), "-d", str(int(seconds))]
            argv += ["-r", "100", "-f", "raw", "-o", str(out_dir / f"{name}.txt"), "--nonblocking"]
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

        def dumps():
            time.sleep(seconds / 2)
            with (out_dir / "dump.txt").open("w") as f:
                for name, pid in targets.items():
                    f.write(f"===== {name} (pid {pid}) =====\n")
                    f.flush()
                    subprocess.run([pyspy, "dump", "-p", str(pid)], stdout=f, stderr=f)

        dumper = threading.Thread(target=dumps)
        dumper.start()
        run = self.measure(
            "profiled-spread",
            8,
            "allocate",
            "SPREAD-",
            SPREAD_SKUS,
            seconds=seconds + 2,
            record=False,
        )
        dumper.join()
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            if proc.returncode:
                log(f"py-spy: {err.decode()[-500:]}")
        self.out["profile"] = {
            "run": {k: run[k] for k in ("rate", "latency_ms", "statuses", "cpu_ms_per_request")},
            "pids": targets,
            "files": sorted(p.name for p in out_dir.iterdir()),
            "summary": {
                name: report.profile_summary(out_dir / f"{name}.txt")
                for name in ("web-1", "web-2", "worker-1", "worker-2")
                if (out_dir / f"{name}.txt").exists()
            },
        }

    # --- after the run --------------------------------------------------------------------------

    def calibration(self, seconds: float = 10.0, clients: int = 8) -> dict:
        """pgbench of the service's allocation transaction (bench/sql/allocate.sql) on this
        run's database and machine: the rate PostgreSQL alone sustains, against which the
        service's own rate is compared (runs on machines of other speeds compare so). Run
        after the checks: it writes lines that no read model has."""
        log(f"calibration: pgbench of the allocation transaction, {clients} clients")
        done = subprocess.run(
            [
                "pgbench",
                "-n",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-c",
                str(clients),
                "-j",
                "2",
                "-T",
                f"{seconds:g}",
                "-f",
                str(ROOT / "bench" / "sql" / "allocate.sql"),
                self.stack.config.database,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 120,
        )
        found = re.search(r"tps = ([\d.]+) \(without initial connection time\)", done.stdout)
        if done.returncode != 0 or not found:
            log(f"calibration failed: {done.stdout[-500:]} {done.stderr[-500:]}")
            return {"error": (done.stdout + done.stderr)[-2000:]}
        tps = float(found.group(1))
        spread = self.find("spread", 8)
        result = {"pgbench_tps": tps, "clients": clients, "seconds": seconds}
        if spread:
            result["spread_8_percent_of_pgbench"] = round(100 * spread["rate"] / tps, 1)
        log(
            f"calibration: {tps:.0f} transactions/s; spread at 8 connections = "
            f"{result.get('spread_8_percent_of_pgbench')}% of it"
        )
        return result

    def checks(self) -> dict:
        log("checking: no batch over-allocated, counters match the lines, read models match")
        over = self.conn.execute(
            "SELECT count(*) FROM allocation_batch WHERE allocated_quantity > purchased_quantity"
        ).fetchone()[0]
        mismatched = self.conn.execute(
            "SELECT b.reference, b.allocated_quantity, coalesce(sum(a.qty), 0) "
            "FROM allocation_batch b LEFT JOIN allocation_allocation a ON a.batch_id = b.id "
            "GROUP BY b.id HAVING b.allocated_quantity <> coalesce(sum(a.qty), 0) LIMIT 20"
        ).fetchall()
        pending = metrics.pending_deliveries(self.conn)
        dead = self.conn.execute(
            "SELECT count(*) FROM allocation_delivery WHERE status = 'dead'"
        ).fetchone()[0]
        foreign = self.conn.execute(
            "SELECT count(*) FROM allocation_storedevent WHERE sku !~ "
            "'^(SPREAD-[0-9]+|HOT|HIST-[0-9]+|SCARCE-[0-9]+|READ)$'"
        ).fetchone()[0]
        proc = self.stack.manage("check-readmodels", "check_readmodels", timeout=300, check=False)
        counts = {
            table: self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in (
                "allocation_allocation",
                "allocation_storedevent",
                "allocation_delivery",
                "readmodels_orderallocation",
            )
        }
        result = {
            "over_allocated_batches": over,
            "batches_whose_counter_differs_from_their_lines": [list(r) for r in mismatched],
            "pending_deliveries": pending,
            "dead_deliveries": dead,
            "check_readmodels_exit": proc.popen.returncode,
            "check_readmodels_output": proc.log("stdout")[-2000:] + proc.log("stderr")[-2000:],
            "row_counts": counts,
            "events_not_written_by_the_bench": foreign,
        }
        result["passed"] = (
            over == 0 and not mismatched and result["check_readmodels_exit"] == 0 and dead == 0
        )
        log(f"checks {'passed' if result['passed'] else 'FAILED'}: {json.dumps(result)[:600]}")
        return result

    def memory(self) -> dict:
        web_master, web = web_pids(self.stack)
        worker_main, pool = worker_pids(self.stack)
        return {
            "web_total_mib": metrics.rss_mib([web_master, *web]),
            "web_workers_mib": [metrics.rss_mib([p]) for p in web],
            "worker_total_mib": metrics.rss_mib([worker_main, *pool]),
            "worker_pool_mib": [metrics.rss_mib([p]) for p in pool],
            "web_pids": web,
            "pool_pids": pool,
        }


def cpu_seconds(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs (minutes)")
    parser.add_argument(
        "--profile-seconds", type=float, default=None, help="py-spy run length (0: none)"
    )
    parser.add_argument(
        "--keep-db", action="store_true", help="keep the run's database (it is dropped)"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.profile_seconds is not None:
        plan = Plan(**{**asdict(plan), "profile_seconds": args.profile_seconds})

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{plan.name}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    artifacts_dir = RESULTS / stamp
    artifacts_dir.mkdir()
    json_path = RESULTS / f"{stamp}.json"
    began = time.monotonic()
    out: dict = {
        "plan": asdict(plan),
        "started_at": datetime.now(UTC).isoformat(),
        "artifacts_dir": str(artifacts_dir),
        "machine": metrics.machine(),
        "code": metrics.code_state(ROOT),
        "runs": [],
    }
    log(f"{plan.name} run, results in {json_path}")
    log_dir = ARTIFACTS_ROOT / ARTIFACTS
    database = f"{DATABASE_PREFIX}_{stamp.split('-')[0].lower()}"
    with (
        private_redis(log_dir) as redis_server,
        bench_stack(redis_server.url, database) as stack,
    ):
        bench = Bench(plan, stack, redis_server, out)
        out["versions"] = metrics.versions(bench.conn, redis_server.client)
        out["postgres_settings"] = metrics.postgres_settings(bench.conn)
        out["stack"] = {
            "web": " ".join(stack.web.argv[1:]).replace(str(BIN) + "/", ""),
            "web_workers": WEB_WORKERS,
            "web_threads": WEB_THREADS,
            "worker": " ".join(stack.worker.argv[1:]),
            "worker_concurrency": WORKER_CONCURRENCY,
            "beat": True,
            "database": database,
            "redis": f"private redis-server on port {redis_server.port}",
            "env": BENCH_ENV,
            "logs": str(log_dir.relative_to(ROOT)),
        }
        out["memory_start"] = bench.memory()
        try:
            bench.setup()
            bench.warm_up()
            out["memory_after_warmup"] = bench.memory()
            for scenario in (bench.spread, bench.hot, bench.scarce, bench.history, bench.read):
                scenario()
            bench.lag()
            if plan.no_wait_diagnostic:
                bench.without_waiting()
            out["drain"] = [bench.drain("sweep_outbox")]
            if plan.drain_beat_only:
                out["drain"].append(bench.drain("beat"))
            if plan.profile_seconds:
                bench.profile()
            out["memory_end"] = bench.memory()
            log("counting SQL statements per allocation, by phase")
            out["statements"] = count_queries(stack)
            out["checks"] = bench.checks()
            out["calibration"] = bench.calibration()
        finally:
            out["finished_at"] = datetime.now(UTC).isoformat()
            out["wall_seconds"] = round(time.monotonic() - began, 1)
            json_path.write_text(json.dumps(out, indent=1, default=str))
            with contextlib.suppress(Exception):
                bench.conn.close()
    if not args.keep_db:
        drop_database(database)
    log(f"wrote {json_path} ({out['wall_seconds']:.0f}s)")
    summary = report.write(json_path, artifacts_dir)
    log(f"wrote {summary} and its plots")
    return 0 if out.get("checks", {}).get("passed") else 1


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
