"""Surviving the database: PostgreSQL restarted, crashed, down at start-up, out of
connections, or holding a lock, under real processes.

A stack of this module's own on a private PostgreSQL cluster (initdb on a free port, in a
temporary folder) and a private Redis, so that stopping the server disturbs nothing else:
gunicorn, a prefork Celery worker, beat and the consumer. Clients retry a 503 as its
Retry-After asks (the book's allocate is idempotent), and the tests check that no answer is a
500, that every allocation a client was told about is in the write table and reaches the read
model, and that the processes recover without being restarted.

Workers here commit their derived writes asynchronously (ALLOCATION_WORKER_ASYNC_COMMIT), so
the crash test is also the fault test of that setting: an immediate stop loses the last
commits that had not reached the disk, and the outbox delivers them again.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e.fault_handlers import EFFECTS_TABLE, SLOW_PREFIX, create_effects_table, gate_key
from tests.e2e.harness import (
    ARTIFACTS_ROOT,
    BIN,
    PG_HOST,
    PG_USER,
    PrivatePostgres,
    PrivateRedis,
    Process,
    StackConfig,
    free_port,
    running_stack,
    wait_until,
)

pytestmark = pytest.mark.e2e

ARTIFACTS_SUBFOLDER = "e2e-database"
DATABASE = "allocation_e2e_database"
SWEEP_INTERVAL = 1.0
STALLED_AFTER = 3.0
RECOVERY_TIMEOUT = 90.0
OUTAGE_ENV = {
    "ALLOCATION_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
    "ALLOCATION_STALLED_AFTER": str(STALLED_AFTER),
    "ALLOCATION_WEB_LOCK_TIMEOUT": "1",
    "ALLOCATION_WRITE_THROTTLE_RATE": "off",
    "ALLOCATION_READ_YOUR_WRITES_TIMEOUT": "1",
    "ALLOCATION_WORKER_ASYNC_COMMIT": "1",
    "ALLOCATION_EXTRA_EVENT_HANDLERS": json.dumps(
        {"Allocated": ["tests.e2e.fault_handlers.slow_effect"]}
    ),
}


@pytest.fixture(scope="module")
def pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(
        log_dir=ARTIFACTS_ROOT / ARTIFACTS_SUBFOLDER, settings={"max_connections": "40"}
    )
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def stack(pg):
    broker = PrivateRedis(log_dir=ARTIFACTS_ROOT / ARTIFACTS_SUBFOLDER, name="database-redis")
    broker.start()
    config = StackConfig(
        database=DATABASE,
        pg_port=pg.port,
        redis_url=broker.url,
        env=OUTAGE_ENV,
        processes=("web", "worker", "beat", "consumer"),
        artifacts=ARTIFACTS_SUBFOLDER,
        after_migrate=create_effects_table,
    )
    try:
        with running_stack(config) as running:
            yield running
    finally:
        broker.close()


@pytest.fixture(autouse=True)
def database_up(pg, stack):
    """Each test starts and ends with the server up and nothing left to deliver."""
    if not pg.running():
        pg.start()
    yield
    if not pg.running():
        pg.start()
    wait_until(lambda: pending(stack) == 0, RECOVERY_TIMEOUT, "every delivery to be done")


def query(stack, sql: str, *params):
    with stack.connect() as conn:
        return conn.execute(sql, params).fetchall()


def pending(stack) -> int:
    try:
        return query(stack, "SELECT count(*) FROM allocation_delivery WHERE status = 'pending'")[0][
            0
        ]
    except psycopg.OperationalError:
        return -1  # the server is not back yet


def lines_of(stack, sku: str) -> set[str]:
    rows = query(stack, "SELECT orderid FROM allocation_allocation WHERE sku = %s", sku)
    return {orderid for (orderid,) in rows}


def in_read_model(stack, orderids: set[str]) -> set[str]:
    rows = query(
        stack,
        "SELECT orderid FROM readmodels_orderallocation WHERE orderid = ANY(%s)"
        " AND batchref IS NOT NULL",
        list(orderids),
    )
    return {orderid for (orderid,) in rows}


class Clients:
    """Threads that allocate one new order after another, each retrying a 503 (as its
    Retry-After asks, a little faster) until the answer is final."""

    def __init__(self, api, sku: str, count: int = 4):
        self.api, self.sku = api, sku
        self.stop = threading.Event()
        self.statuses: collections.Counter = collections.Counter()
        self.accepted: set[str] = set()
        self.refused: dict[str, int] = {}
        self.threads = [threading.Thread(target=self.run, args=(n,)) for n in range(count)]

    def run(self, n: int) -> None:
        i = 0
        while not self.stop.is_set():
            orderid = f"{self.sku}-c{n}-{i}"
            while True:
                response = self.api.allocate(orderid, self.sku, 1)
                self.statuses[response.status] += 1
                if response.status != 503 or self.stop.is_set():
                    break
                time.sleep(0.1)
            if response.status == 202:
                self.accepted.add(orderid)
            elif response.status != 503:  # (a 503 left when the test stopped: unknown)
                self.refused[orderid] = response.status
            i += 1

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def wait_for(self, count: int, what: str) -> None:
        wait_until(lambda: len(self.accepted) >= count, RECOVERY_TIMEOUT, what)


@contextlib.contextmanager
def no_process_restarted(stack) -> Iterator[None]:
    """Every process of the stack is the same one, and alive, at the end of the block."""
    before = {role: proc.popen.pid for role, proc in stack.processes.items()}
    yield
    for role, pid in before.items():
        proc = stack.processes[role]
        assert proc.popen.pid == pid, f"{role} was restarted"
        assert proc.alive(), f"{role} exited"


def test_a_restart_under_load_answers_503_never_500_and_every_allocation_arrives(pg, stack):
    api, sku = stack.api, f"restart-{uuid.uuid4().hex[:8]}"
    assert api.add_batch(f"{sku}-b", sku, 1_000_000).status == 201

    with no_process_restarted(stack), Clients(api, sku) as clients:
        clients.wait_for(30, "30 allocations before the restart")
        pg.restart(down_for=2.0)  # pg_ctl restart -m fast, with a failover's pause
        back = time.monotonic()
        before = len(clients.accepted)
        clients.wait_for(before + 30, "30 allocations after the restart")

    assert set(clients.statuses) <= {202, 503}, clients.statuses  # never a 500
    assert clients.statuses[503] > 0  # the outage was there to see
    assert clients.refused == {}
    # No line the clients were not told about, none they were told about missing.
    assert lines_of(stack, sku) == clients.accepted
    wait_until(
        lambda: in_read_model(stack, clients.accepted) == clients.accepted,
        RECOVERY_TIMEOUT,
        "every allocation in the read model",
    )
    print(f"\nrecovered: every delivery done {time.monotonic() - back:.1f}s after the restart")
    checked = stack.manage("check", "check_readmodels", check=False)
    assert checked.popen.returncode == 0, checked.log("stdout")


def test_a_crash_loses_no_acknowledged_allocation_and_the_views_converge(pg, stack):
    """An immediate stop: no checkpoint, and the workers' last asynchronous commits lost."""
    api, sku = stack.api, f"crash-{uuid.uuid4().hex[:8]}"
    assert api.add_batch(f"{sku}-b", sku, 1_000_000).status == 201

    with no_process_restarted(stack), Clients(api, sku) as clients:
        clients.wait_for(30, "30 allocations before the crash")
        pg.stop("immediate")
        pg.start()
        before = len(clients.accepted)
        clients.wait_for(before + 30, "30 allocations after the crash")

    assert set(clients.statuses) <= {202, 503}, clients.statuses
    assert lines_of(stack, sku) == clients.accepted  # the web's commits are synchronous
    wait_until(
        lambda: in_read_model(stack, clients.accepted) == clients.accepted,
        RECOVERY_TIMEOUT,
        "every allocation in the read model",
    )
    checked = stack.manage("check", "check_readmodels", check=False)
    assert checked.popen.returncode == 0, checked.log("stdout")


def allocate_until_final(api, orderid: str, sku: str):
    """A client's allocate: 503s are retried, as their Retry-After asks."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    while True:
        response = api.allocate(orderid, sku, 1)
        if response.status != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


def test_the_worker_survives_a_restart_between_tasks_and_during_one(pg, stack):
    with no_process_restarted(stack):
        worker_survives_restarts(pg, stack)


def worker_survives_restarts(pg, stack):
    api, run = stack.api, uuid.uuid4().hex[:8]
    sku = f"worker-{run}"
    assert api.add_batch(f"{sku}-b", sku, 100).status == 201
    assert allocate_until_final(api, f"idle-{run}", sku).status == 202
    wait_until(lambda: api.batchref_of(f"idle-{run}"), 30, "the first allocation projected")

    pg.restart(down_for=0.5)  # between tasks: the worker's connections are dead, it is idle
    assert allocate_until_final(api, f"after-{run}", sku).status == 202
    wait_until(
        lambda: api.batchref_of(f"after-{run}"),
        RECOVERY_TIMEOUT,
        "an allocation after the restart to be projected",
    )

    # During a task: the slow handler waits for its gate (a lock in this very server), and
    # the restart cuts its transaction off; its delivery runs again, its effect happens once.
    order = f"{SLOW_PREFIX}{run}"
    with stack.connect() as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (gate_key(order),))
        assert allocate_until_final(api, order, sku).status == 202
        stack.worker.wait_for_log(rf"slow effect started {order}\b", 60, stream="both")
        pg.restart(down_for=0.5)
    wait_until(
        lambda: (
            query(stack, f"SELECT count(*) FROM {EFFECTS_TABLE} WHERE orderid = %s", order)
            == [(1,)]
            and pending(stack) == 0
        ),
        RECOVERY_TIMEOUT,
        "the interrupted delivery to run again",
    )
    assert api.batchref_of(order) == f"{sku}-b"


def test_health_says_degraded_while_deliveries_stall_and_ok_once_they_flow(stack):
    api, sku = stack.api, f"stall-{uuid.uuid4().hex[:8]}"
    assert api.add_batch(f"{sku}-b", sku, 100).status == 201

    def health():
        response = api.request("GET", "/health/", token=None)
        return response.status, response.body

    stack.stop("worker")  # nothing takes the due deliveries
    try:
        assert api.allocate(f"{sku}-o1", sku, 1).status == 202
        status, body = wait_until(
            lambda: (h := health())[1]["status"] == "degraded" and h,
            RECOVERY_TIMEOUT,
            "/health/ to say degraded",
        )
        assert status == 200  # writes still commit: degraded, not unavailable
        assert body["checks"]["outbox"]["ok"] is False
        assert body["checks"]["outbox"]["oldest_due_seconds"] >= STALLED_AFTER
        metrics = api.request("GET", "/metrics", token=None).body
        assert "allocation_outbox_oldest_due_seconds" in metrics
    finally:
        stack.start("worker")
    wait_until(lambda: health()[1]["status"] == "ok", RECOVERY_TIMEOUT, "/health/ to say ok")


def test_processes_started_while_the_database_is_down_wait_for_it(pg, stack):
    api, sku = stack.api, f"late-{uuid.uuid4().hex[:8]}"
    assert api.add_batch(f"{sku}-b", sku, 100).status == 201
    pg.stop()
    waiter = Process(
        "wait-for-database",
        [str(BIN / "python"), "manage.py", "wait_for_database", "--timeout", "120"],
        env=dict(stack.env),
        log_dir=stack.log_dir,
    ).start()
    try:
        stack.restart("worker")  # starts, and stays up, with no database
        stack.restart("consumer")
        assert waiter.alive() and stack.worker.alive() and stack.consumer.alive()
        assert api.allocate(f"{sku}-o1", sku, 1).status == 503
        pg.start()
        wait_until(lambda: not waiter.alive(), 60, "wait_for_database to see the server")
        assert waiter.popen.returncode == 0, waiter.logs()
    finally:
        waiter.stop()

    assert allocate_until_final(api, f"{sku}-o2", sku).status == 202
    wait_until(lambda: api.batchref_of(f"{sku}-o2"), RECOVERY_TIMEOUT, "the allocation projected")
    assert stack.worker.alive() and stack.consumer.alive()


@contextlib.contextmanager
def every_connection_taken(pg) -> Iterator[list]:
    """Hold every connection the server will give (superusers take the reserved ones too)."""
    held = []
    try:
        while True:
            try:
                held.append(
                    psycopg.connect(
                        host=PG_HOST,
                        port=pg.port,
                        user=PG_USER,
                        dbname="postgres",
                        connect_timeout=5,
                    )
                )
            except psycopg.OperationalError as exc:
                assert "too many clients" in str(exc), exc
                break
        yield held
    finally:
        for conn in held:
            conn.close()


def test_a_web_process_that_finds_no_free_connection_answers_503(pg, stack):
    api, sku = stack.api, f"full-{uuid.uuid4().hex[:8]}"
    assert api.add_batch(f"{sku}-b", sku, 100).status == 201
    # A web process that opens a connection per request, so that it needs a new one now.
    port = free_port()
    web = Process(
        "gunicorn-no-reuse",
        [str(BIN / "gunicorn"), "config.wsgi", "-b", f"127.0.0.1:{port}", "-w", "1"],
        env={**stack.env, "DJANGO_CONN_MAX_AGE": "0"},
        log_dir=stack.log_dir,
    ).start()
    try:
        from tests.e2e.harness import Api

        fresh = Api("127.0.0.1", port, api.token)
        wait_until(lambda: _answers(fresh, f"{sku}-probe", sku) == 202, 60, "the extra web process")
        with every_connection_taken(pg):
            full = fresh.allocate(f"{sku}-o1", sku, 1)
            assert full.status == 503, full
            assert full.headers["retry-after"] == "2"
            assert set(full.body) == {"message"}
        assert allocate_until_final(fresh, f"{sku}-o1", sku).status == 202
    finally:
        web.stop()


def _answers(api, orderid: str, sku: str) -> int | None:
    try:
        return api.allocate(orderid, sku, 1).status
    except OSError:
        return None


def test_a_lock_held_past_the_lock_timeout_is_a_503_and_the_retry_succeeds(stack):
    api, sku = stack.api, f"locked-{uuid.uuid4().hex[:8]}"
    assert api.add_batch(f"{sku}-b", sku, 100).status == 201
    with stack.connect() as holder, holder.transaction():
        holder.execute("SELECT 1 FROM allocation_product WHERE sku = %s FOR UPDATE", (sku,))
        blocked = api.allocate(f"{sku}-o1", sku, 1)
    assert blocked.status == 503, blocked
    assert blocked.headers["retry-after"] == "1"
    retried = api.allocate(f"{sku}-o1", sku, 1)
    assert (retried.status, retried.body) == (202, {"batchref": f"{sku}-b"})
