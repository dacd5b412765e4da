"""Every statement PostgreSQL receives for one `POST /allocate`, by process (web or worker).

A one-off probe, not part of `make bench`: it starts a small stack (a gunicorn worker, a
Celery worker) on a database of its own with `log_statement = 'all'`, and reads the PostgreSQL
server log (root can; set BENCH_PG_LOG when the log is not Debian's default). Unlike
bench/querycount.py, it also sees BEGIN, COMMIT and the connection health check.

    .venv/bin/python -m bench.roundtrips              # 20 allocations one after the other
    .venv/bin/python -m bench.roundtrips --load 10    # wrk at 8 connections for 10 s, spread

One at a time, a worker step holds one allocation; under load it holds several, and what a
step costs is shared among them.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

from bench.data import add_batches
from bench.stack import BENCH_ENV, BenchStack, children, drop_database
from bench.wrk import run_wrk
from tests.e2e.harness import ARTIFACTS_ROOT, PrivateRedis, StackConfig, connect

DATABASE = "allocation_bench_roundtrips"
LOG = Path(os.environ.get("BENCH_PG_LOG", "/var/log/postgresql/postgresql-15-main.log"))
REQUESTS = 20


def backend_roles(stack: BenchStack) -> dict[str, str]:
    """PostgreSQL backend pid -> "web" or "worker", through each connection's client port."""
    ss = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
    web = {stack.web.popen.pid, *children(stack.web.popen.pid)}
    with connect(stack.config.database) as conn:
        rows = conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s",
            (stack.config.database,),
        ).fetchall()
    roles = {}
    for pid, port in rows:
        found = re.search(rf"127\.0\.0\.1:{port}\s+\S+\s+users:\(\(\"[^\"]+\",pid=(\d+)", ss)
        if found:
            roles[str(pid)] = "web" if int(found.group(1)) in web else "worker"
    return roles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--load", type=float, default=0, help="seconds of wrk load (0: none)")
    args = parser.parse_args()

    def log_everything(stack):
        with connect(stack.config.database) as conn:
            conn.execute(f"ALTER DATABASE {stack.config.database} SET log_statement = 'all'")

    redis_server = PrivateRedis(log_dir=ARTIFACTS_ROOT / "bench-roundtrips")
    redis_server.start()
    config = StackConfig(
        database=DATABASE,
        redis_url=redis_server.url,
        env=BENCH_ENV,
        processes=("web", "worker"),
        web_workers=2,
        artifacts="bench-roundtrips",
        after_migrate=log_everything,
    )
    stack = BenchStack(config)
    try:
        stack.prepare()
        stack.start_all()
        api = stack.api
        assert api.add_batch("P-b", "P", 1_000_000).status == 201
        add_batches(api, [f"SPREAD-{i}" for i in range(50)])
        for i in range(5):
            api.allocate(f"warm-{i}", "P", 1)
        time.sleep(1)
        with LOG.open("rb") as f:
            start = f.seek(0, 2)
        if args.load:
            result = run_wrk(api.base_url, 8, args.load, "allocate", api.token, "rt", "SPREAD-", 50)
            requests = result["statuses"].get("202", 0)
        else:
            for _ in range(REQUESTS):
                assert api.allocate(f"o-{uuid.uuid4().hex}", "P", 1).status == 202
            requests = REQUESTS
        time.sleep(2)
        with LOG.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        roles = backend_roles(stack)
    finally:
        stack.close()
        redis_server.close()
        drop_database(stack.config.database)

    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    statements: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    name = stack.config.database
    pattern = re.compile(rf"\[(\d+)\] \S+@{name} LOG:  (?:statement|execute [^:]+): (.*)")
    for line in text.splitlines():
        found = pattern.search(line)
        if not found:
            continue
        who = roles.get(found.group(1), "?")
        sql = found.group(2)
        kinds[who][sql.split()[0].upper()] += 1
        # One shape per statement: no literals, no savepoint names.
        shape = re.sub(r"'[^']*'|\b\d+\b|\"s\d+_x\d+\"", "?", sql)[:100]
        statements[who][shape] += 1
    for who in sorted(kinds):
        total = sum(kinds[who].values()) / requests
        by_kind = ", ".join(f"{k} {n / requests:.2f}" for k, n in kinds[who].most_common())
        print(f"{who}: {total:.2f} statements per allocation ({by_kind})")
        for shape, n in statements[who].most_common(12):
            print(f"  {n / requests:5.2f}  {shape}")


if __name__ == "__main__":
    main()
