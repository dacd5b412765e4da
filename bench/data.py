"""Test data: batches through the API, allocation history and backlogs made fast.

History is written with bulk SQL that leaves the database as the domain would have: the order
lines (`allocation_allocation`, increasing product versions), the batch's allocated counter,
the product's version, one `Allocated` event per line in the event log with its three
deliveries done, and the read model's rows (so `check_readmodels` still passes).
"""

from __future__ import annotations

import textwrap
import time

import psycopg

from tests.e2e.harness import Api, Stack

BIG = 1_000_000_000  # a batch that never runs out within a benchmark

ALLOCATED_HANDLERS = (
    "read_model.add_allocation",
    "redis.publish_line_allocated",
    "redis.append_to_event_stream",
)
READ_MODEL_HANDLER = ALLOCATED_HANDLERS[0]


def add_batches(api: Api, skus: list[str], qty: int = BIG) -> None:
    """One warehouse batch (`<sku>-b`) per sku, through POST /add_batch."""
    for sku in skus:
        response = api.add_batch(f"{sku}-b", sku, qty)
        assert response.status == 201, response


def add_history(conn: psycopg.Connection, sku: str, lines: int, orderid_prefix: str) -> float:
    """Give `sku` (one batch `<sku>-b`, made through the API) `lines` past allocations.

    Orders are `<orderid_prefix><n>`, n = 1..lines. Returns the seconds it took.
    """
    start = time.monotonic()
    ref = f"{sku}-b"
    with conn.transaction():
        batch_id, version0 = conn.execute(
            "SELECT b.id, p.version_number FROM allocation_batch b "
            "JOIN allocation_product p ON p.sku = b.sku WHERE b.reference = %s FOR UPDATE",
            (ref,),
        ).fetchone()
        params = {
            "sku": sku,
            "ref": ref,
            "batch": batch_id,
            "v0": version0,
            "n": lines,
            "prefix": orderid_prefix,
        }
        conn.execute(
            "INSERT INTO allocation_allocation (orderid, sku, qty, batch_id, version) "
            "SELECT %(prefix)s || g, %(sku)s, 1, %(batch)s, %(v0)s + g "
            "FROM generate_series(1, %(n)s) g",
            params,
        )
        conn.execute(
            "UPDATE allocation_batch SET allocated_quantity = allocated_quantity + %(n)s "
            "WHERE id = %(batch)s",
            params,
        )
        conn.execute(
            "UPDATE allocation_product SET version_number = version_number + %(n)s "
            "WHERE sku = %(sku)s",
            params,
        )
        # The event log: one Allocated event per line, its deliveries done an instant later.
        conn.execute(
            textwrap.dedent(
                """
                CREATE TEMP TABLE bench_history ON COMMIT DROP AS
                SELECT gen_random_uuid() AS id, g,
                       now() - interval '1 hour' + g * interval '1 millisecond' AS at
                FROM generate_series(1, %(n)s) g
                """
            ),
            params,
        )
        conn.execute(
            textwrap.dedent(
                """
                INSERT INTO allocation_storedevent
                    (id, type, sku, version, payload, occurred_at, position, correlation_id,
                     causation_id)
                SELECT id, 'Allocated', %(sku)s::text, %(v0)s::bigint + g,
                       jsonb_build_object('orderid', %(prefix)s::text || g, 'sku', %(sku)s::text,
                                          'qty', 1, 'batchref', %(ref)s::text,
                                          'version', %(v0)s::bigint + g),
                       at, 0, 'bench-history', 'bench-history'
                FROM bench_history
                """
            ),
            params,
        )
        conn.execute(
            "INSERT INTO allocation_delivery "
            "(event_id, handler, status, attempts, last_error, next_attempt_at, done_at) "
            "SELECT id, h, 'done', 1, '', at, at + interval '5 milliseconds' "
            "FROM bench_history, unnest(%(handlers)s::text[]) h",
            {**params, "handlers": list(ALLOCATED_HANDLERS)},
        )
        conn.execute(
            "INSERT INTO readmodels_orderallocation (orderid, sku, qty, batchref, version) "
            "SELECT %(prefix)s || g, %(sku)s, 1, %(ref)s, %(v0)s + g "
            "FROM generate_series(1, %(n)s) g",
            params,
        )
        conn.execute(
            "UPDATE readmodels_batchstock SET allocated = allocated + %(n)s "
            "WHERE reference = %(ref)s",
            params,
        )
    conn.execute("ANALYZE")
    return time.monotonic() - start


BACKLOG_SCRIPT = """
from allocation.bootstrap import bootstrap
from allocation.domain import commands

lost = []
bus = bootstrap(wake=lost.extend).bus  # the after-commit wake-up goes nowhere
for i in range({count}):
    bus.handle(commands.Allocate("{prefix}-%d" % i, "{sku_prefix}%d" % (i % {skus}), 1))
print("LOST", len(lost))
"""


def make_backlog(stack: Stack, events: int, skus: int, sku_prefix: str, prefix: str) -> int:
    """`events` Allocated events whose wake-ups were lost, made through the bus.

    Two processes share the work (the box has two cores). Nothing takes their deliveries
    before the drain starts as long as beat is stopped: no wake-up, no sweep. Returns the
    deliveries lost.
    """
    import subprocess

    from tests.e2e.harness import BIN, ROOT

    env = dict(stack.env)
    halves = [events // 2, events - events // 2]
    procs = []
    for n, count in enumerate(halves):
        script = BACKLOG_SCRIPT.format(
            count=count, prefix=f"{prefix}{n}", sku_prefix=sku_prefix, skus=skus
        )
        procs.append(
            subprocess.Popen(
                [str(BIN / "python"), "manage.py", "shell", "-c", script],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    lost = 0
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"making the backlog failed:\n{err[-3000:]}")
        lost += int(out.split("LOST")[-1].split()[0])
    return lost
