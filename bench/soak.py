"""Memory over a long run: `python -m bench.soak [--events 100000]` (`make bench-soak`).

The same stack as `bench.run` (gunicorn -w 4, a prefork worker, beat, PostgreSQL, a private
Redis) takes spread allocations at 8 connections, one minute of wrk at a time, until `--events`
events went through it; the RSS of the web (master and workers) and of the Celery worker (main
and pool processes) is read after warm-up and after every minute. It ends with the same
consistency checks as the full run and writes `bench/results/<stamp>-soak.json`. A figure, not
a test: it exits non-zero only when the checks fail.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime

from bench.run import FULL, RESULTS, SPREAD_SKUS, Bench, log
from bench.stack import ARTIFACTS, DATABASE_PREFIX, bench_stack, drop_database, private_redis
from tests.e2e.harness import ARTIFACTS_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events through the stack")
    parser.add_argument("--minute", type=float, default=60, help="seconds per wrk run")
    args = parser.parse_args(argv)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-soak"
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{stamp}.json"
    database = f"{DATABASE_PREFIX}_{stamp.split('-')[0].lower()}"
    out: dict = {"started_at": datetime.now(UTC).isoformat(), "runs": [], "samples": []}
    began = time.monotonic()
    with (
        private_redis(ARTIFACTS_ROOT / ARTIFACTS) as redis_server,
        bench_stack(redis_server.url, database) as stack,
    ):
        bench = Bench(FULL, stack, redis_server, out)
        bench.setup()
        bench.warm_up()

        def sample(label: str) -> dict:
            events = bench.conn.execute(
                "SELECT count(*) FROM allocation_storedevent WHERE sku LIKE 'SPREAD-%'"
            ).fetchone()[0]
            memory = bench.memory()
            row = {
                "after": label,
                "events": events,
                "web_total_mib": memory["web_total_mib"],
                "worker_total_mib": memory["worker_total_mib"],
            }
            out["samples"].append(row)
            log(
                f"{label}: {events} events, web {row['web_total_mib']} MiB, "
                f"worker {row['worker_total_mib']} MiB"
            )
            return row

        first = sample("warm-up")
        n = 0
        while out["samples"][-1]["events"] < args.events:
            n += 1
            run = bench.measure(
                "soak", 8, "allocate", "SPREAD-", SPREAD_SKUS, seconds=args.minute, record=False
            )
            out["runs"].append({k: run[k] for k in ("rate", "latency_ms", "statuses")})
            sample(f"run {n}")
        last = out["samples"][-1]
        out["growth_after_warm_up_percent"] = {
            group: round(100 * (last[group] - first[group]) / first[group], 1)
            for group in ("web_total_mib", "worker_total_mib")
        }
        out["checks"] = bench.checks()
        bench.conn.close()
    out["wall_seconds"] = round(time.monotonic() - began, 1)
    json_path.write_text(json.dumps(out, indent=1, default=str))
    drop_database(database)
    log(
        f"wrote {json_path}: {last['events']} events; RSS growth after warm-up "
        f"{out['growth_after_warm_up_percent']}"
    )
    return 0 if out["checks"]["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
