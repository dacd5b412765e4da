"""Every statement PostgreSQL receives for one `POST /allocate`, by process (web or worker).

A one-off probe, not part of `make bench`: it starts a small stack (1 gunicorn worker, a
Celery worker) on a database of its own with `log_statement = 'all'`, sends 20 allocations one
after the other, and reads the PostgreSQL server log (root can; set BENCH_PG_LOG when the log
is not Debian's default). Unlike bench/querycount.py, it also sees BEGIN, COMMIT and the
connection health check.

    .venv/bin/python -m bench.roundtrips
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

from bench.stack import BENCH_ENV, BenchStack, children, drop_database
from tests.e2e.harness import ARTIFACTS_ROOT, PrivateRedis, StackConfig, connect

DATABASE = "allocation_bench_roundtrips"
LOG = Path(os.environ.get("BENCH_PG_LOG", "/var/log/postgresql/postgresql-15-main.log"))
REQUESTS = 20


def backend_roles(stack: BenchStack) -> dict[str, str]:
    """PostgreSQL backend pid -> "web" or "worker", through each connection's client port."""
    ss = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True).stdout
    web = {stack.web.popen.pid, *children(stack.web.popen.pid)}
    with connect(DATABASE) as conn:
        rows = conn.execute(
            "SELECT pid, client_port FROM pg_stat_activity WHERE datname = %s", (DATABASE,)
        ).fetchall()
    roles = {}
    for pid, port in rows:
        found = re.search(rf"127\.0\.0\.1:{port}\s+\S+\s+users:\(\(\"[^\"]+\",pid=(\d+)", ss)
        if found:
            roles[str(pid)] = "web" if int(found.group(1)) in web else "worker"
    return roles


def main() -> None:
    def log_everything(stack):
        with connect(DATABASE) as conn:
            conn.execute(f"ALTER DATABASE {DATABASE} SET log_statement = 'all'")

    redis_server = PrivateRedis(log_dir=ARTIFACTS_ROOT / "bench-roundtrips")
    redis_server.start()
    config = StackConfig(
        database=DATABASE,
        redis_url=redis_server.url,
        env=BENCH_ENV,
        processes=("web", "worker"),
        web_workers=1,
        artifacts="bench-roundtrips",
        after_migrate=log_everything,
    )
    stack = BenchStack(config)
    try:
        stack.prepare()
        stack.start_all()
        api = stack.api
        assert api.add_batch("P-b", "P", 1_000_000).status == 201
        for i in range(5):
            api.allocate(f"warm-{i}", "P", 1)
        time.sleep(1)
        with LOG.open("rb") as f:
            start = f.seek(0, 2)
        for _ in range(REQUESTS):
            assert api.allocate(f"o-{uuid.uuid4().hex}", "P", 1).status == 202
        time.sleep(2)
        with LOG.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        roles = backend_roles(stack)
    finally:
        stack.close()
        redis_server.close()
        drop_database(DATABASE)

    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    statements: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    pattern = re.compile(rf"\[(\d+)\] \S+@{DATABASE} LOG:  statement: (.*)")
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
        total = sum(kinds[who].values()) / REQUESTS
        by_kind = ", ".join(f"{k} {n / REQUESTS:g}" for k, n in kinds[who].most_common())
        print(f"{who}: {total:g} statements per allocation ({by_kind})")
        for shape, n in statements[who].most_common():
            print(f"  {n / REQUESTS:5.2f}  {shape}")


if __name__ == "__main__":
    main()
