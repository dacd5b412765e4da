"""The benchmarked stack: the e2e harness's processes, sized and configured for measuring.

gunicorn (`WEB_WORKERS` x `WEB_THREADS`), a Celery worker (prefork, `WORKER_CONCURRENCY`) and
beat (the outbox sweeper), on a database of their own (`allocation_bench_<run>`) and a private
redis-server, so that nothing else on the machine shares their broker or their tables.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.harness import (
    PrivateRedis,
    Stack,
    StackConfig,
    lock_path,
    running_stack,
)

# Each run gets a database of its own, allocation_bench_<run stamp>, dropped at the end (keep it
# with --keep-db): nothing else on the machine writes to it, not even another run's leftovers.
DATABASE_PREFIX = "allocation_bench"
# gunicorn as `make web` runs it (config/gunicorn.py); BENCH_WEB_WORKERS and BENCH_WEB_THREADS
# try other shapes (threads 0: sync workers, as the service ran before).
WEB_WORKERS = int(os.environ.get("BENCH_WEB_WORKERS", "2"))
WEB_THREADS = int(os.environ.get("BENCH_WEB_THREADS", "8"))
WORKER_CONCURRENCY = 2  # prefork; sized like the web side (PERF_NOTES, "Sizing")
ARTIFACTS = "bench"  # process logs: tests/artifacts/bench/

# The settings every benchmark runs with. Throttling is off (it would turn load into 429s);
# everything else is the production default, written out so the report records it.
BENCH_ENV = {
    "ALLOCATION_WRITE_THROTTLE_RATE": "off",
    "ALLOCATION_READ_YOUR_WRITES_TIMEOUT": "2.0",
    "DJANGO_CONN_MAX_AGE": "60",
    "CELERY_DB_REUSE_MAX": "1000",
    "ALLOCATION_SWEEP_INTERVAL": "5",
    "ALLOCATION_DELIVERY_BATCH": "500",
    "ALLOCATION_DELIVERY_LEASE": "30",
    "DJANGO_LOG_LEVEL": "INFO",
}


class BenchStack(Stack):
    """The harness's stack, with gunicorn started as `make web` starts it (no access log)."""

    def argv(self, role: str) -> list[str]:
        argv = super().argv(role)
        if role == "web":
            # The harness logs every request for the e2e tests; production (`make web`) does not.
            i = argv.index("--access-logfile")
            del argv[i : i + 2]
            argv += ["--timeout", "60"]
        return argv


@contextlib.contextmanager
def bench_stack(
    redis_url: str, database: str, processes=("web", "worker", "beat")
) -> Iterator[BenchStack]:
    config = StackConfig(
        database=database,
        redis_url=redis_url,
        env=BENCH_ENV,
        processes=processes,
        worker_concurrency=WORKER_CONCURRENCY,
        web_workers=WEB_WORKERS,
        web_threads=WEB_THREADS,
        artifacts=ARTIFACTS,
    )
    try:
        with running_stack(config, BenchStack) as stack:
            yield stack
    finally:
        lock_path(config.database).unlink(missing_ok=True)  # a lock file per run's database


@contextlib.contextmanager
def private_redis(log_dir: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(log_dir=log_dir, name="bench-redis")
    server.start()
    try:
        yield server
    finally:
        server.close()


def drop_database(name: str) -> None:
    import psycopg

    from tests.e2e.harness import PG_HOST, PG_PORT, PG_USER

    assert name.startswith(DATABASE_PREFIX)
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def children(pid: int) -> list[int]:
    """The direct children of a process (gunicorn's workers, the Celery pool's processes)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return sorted(set(found))


def web_pids(stack: Stack) -> tuple[int, list[int]]:
    """gunicorn's master and its workers."""
    master = stack.web.popen.pid
    return master, children(master)


def worker_pids(stack: Stack) -> tuple[int, list[int]]:
    """The Celery worker's main process and its pool processes."""
    main = stack.worker.popen.pid
    return main, children(main)
