"""Delivery guarantees under faults (docs/architecture.md), on real processes.

A stack of this module's own: gunicorn, a prefork Celery worker and `celery beat` (the sweep),
on PostgreSQL (database allocation_e2e_faults) and on a private redis-server, broker and
pub/sub, that the tests kill and start again. Short leases, a fast sweep and few attempts make
the faults play out in seconds. Two extra handlers subscribe to `Allocated`
(tests/e2e/fault_handlers.py): one with a database effect that waits while a test holds its
gate, and one that always fails; each acts only on orders with its prefix.

The tests check what a client would see (HTTP, `line_allocated`) and what the database holds
(through psycopg, never through the service's code). Lost wake-ups are made by running
commands in a `manage.py shell` process whose broker and Redis point at a port nobody listens
on; deliveries are held back from the sweep by stopping beat and moving them into the future.
"""

from __future__ import annotations

import contextlib
import json
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from celery import Celery

from tests.e2e.fault_handlers import (
    EFFECTS_TABLE,
    FAIL_PREFIX,
    SLOW_PREFIX,
    create_effects_table,
    gate_key,
)
from tests.e2e.harness import (
    ARTIFACTS_ROOT,
    LINE_ALLOCATED,
    Api,
    PrivateRedis,
    Process,
    Stack,
    StackConfig,
    Subscription,
    free_port,
    running_stack,
    wait_until,
)

pytestmark = pytest.mark.e2e

ARTIFACTS_SUBFOLDER = "e2e-faults"
DATABASE = "allocation_e2e_faults"
LEASE = 5.0
MAX_ATTEMPTS = 3
FAULT_ENV = {
    "ALLOCATION_DELIVERY_LEASE": str(LEASE),
    "ALLOCATION_SWEEP_INTERVAL": "0.5",
    "ALLOCATION_DELIVERY_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
    "ALLOCATION_DELIVERY_BACKOFF_BASE": "0.2",
    "ALLOCATION_DELIVERY_BACKOFF_MAX": "1",
    "ALLOCATION_READ_YOUR_WRITES_TIMEOUT": "1",
    "ALLOCATION_EXTRA_EVENT_HANDLERS": json.dumps(
        {
            "Allocated": [
                "tests.e2e.fault_handlers.slow_effect",
                "tests.e2e.fault_handlers.always_fails",
            ]
        }
    ),
}

PROJECT_ADD = "read_model.add_allocation"
PROJECT_REMOVE = "read_model.remove_allocation"
PUBLISH = "redis.publish_line_allocated"
SLOW_EFFECT = "tests.e2e.fault_handlers.slow_effect"
ALWAYS_FAILS = "tests.e2e.fault_handlers.always_fails"
REALLOCATE = "allocation.reallocate"
# Among the subscribers of Allocated (the deployment may add more): the ones these tests watch.
ALLOCATED_HANDLERS = {PROJECT_ADD, PUBLISH, SLOW_EFFECT, ALWAYS_FAILS}
READ_MODEL_PREFIX = "read_model."

CONVERGENCE_TIMEOUT = 60.0
SWEEP_SUCCEEDED = r"Task allocation\.sweep\[[\w-]+\] succeeded"
WAKE_UP_LOST = "could not wake a worker"


# --- the stack ----------------------------------------------------------------------------------


@dataclass
class Faults:
    stack: Stack
    broker: PrivateRedis
    _celery: Celery | None = None

    @property
    def api(self) -> Api:
        return self.stack.api

    def restore(self) -> None:
        """Whatever a test broke (the broker, the worker), running again."""
        if not self.broker.running():
            self.broker.start()
        self.stack.ensure_running()

    def query(self, sql: str, *params: Any) -> list[tuple]:
        with self.stack.connect() as conn:
            return conn.execute(sql, params).fetchall()

    def deliveries(self, where: str, *params: Any) -> list[Delivery]:
        rows = self.query(
            "SELECT d.id, d.handler, d.status, d.attempts, d.last_error, e.id::text, e.type,"
            " e.version, e.payload FROM allocation_delivery d JOIN allocation_storedevent e"
            f" ON e.id = d.event_id WHERE {where} ORDER BY e.version, d.id",
            *params,
        )
        return [Delivery(*row) for row in rows]

    def deliveries_of_order(self, orderid: str) -> list[Delivery]:
        return self.deliveries("e.payload->>'orderid' = %s", orderid)

    def deliveries_of_chain(self, correlation_id: str) -> list[Delivery]:
        return self.deliveries("e.correlation_id = %s", correlation_id)

    def delivery(self, delivery_id: int) -> Delivery:
        (found,) = self.deliveries("d.id = %s", delivery_id)
        return found

    def pending(self) -> int:
        return self.query("SELECT count(*) FROM allocation_delivery WHERE status = 'pending'")[0][0]

    def release_held(self) -> None:
        """Make every pending delivery due now, so that the sweep delivers it."""
        self.query(
            "UPDATE allocation_delivery SET next_attempt_at = now() WHERE status = 'pending'"
            " RETURNING id"
        )

    def wait_until_quiet(self) -> None:
        wait_until(
            lambda: self.pending() == 0,
            CONVERGENCE_TIMEOUT,
            "every pending delivery to be delivered",
            pause=0.2,
        )

    def wait_until_idle(self) -> None:
        """Nothing pending, and the broker holds no task that the worker has not acknowledged."""
        self.wait_until_quiet()
        wait_until(
            lambda: self.broker.client.hlen("unacked") == 0,
            CONVERGENCE_TIMEOUT,
            "the worker to acknowledge its tasks",
            pause=0.05,
        )

    @contextlib.contextmanager
    def gate(self, orderid: str) -> Iterator[None]:
        """Hold the gate of `slow_effect` for `orderid`: its runs wait until the block ends."""
        with self.stack.connect() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (gate_key(orderid),))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (gate_key(orderid),))

    @contextlib.contextmanager
    def no_sweep(self) -> Iterator[None]:
        """Beat stopped: nothing takes due deliveries unless a test sends a worker step."""
        self.stack.stop("beat")
        try:
            yield
        finally:
            self.stack.start("beat")

    def hold(self, correlation_id: str) -> None:
        """Move the chain's pending deliveries an hour into the future: only a step that names
        them (`send_deliver_task`) takes them."""
        self.query(
            "UPDATE allocation_delivery d SET next_attempt_at = now() + interval '1 hour'"
            " FROM allocation_storedevent e WHERE e.id = d.event_id AND d.status = 'pending'"
            " AND e.correlation_id = %s RETURNING d.id",
            correlation_id,
        )

    def effects(self, orderid: str) -> list[str]:
        rows = self.query(f"SELECT event_id FROM {EFFECTS_TABLE} WHERE orderid = %s", orderid)
        return [event_id for (event_id,) in rows]

    def batch_of(self, orderid: str) -> list[str]:
        """The write side's answer: the batches the order's lines are on."""
        rows = self.query(
            "SELECT b.reference FROM allocation_allocation a"
            " JOIN allocation_batch b ON b.id = a.batch_id WHERE a.orderid = %s",
            orderid,
        )
        return [ref for (ref,) in rows]

    def run_with_lost_wake_ups(self, name: str, script: str) -> Process:
        """Run `script` in `manage.py shell` whose broker and Redis are a dead port: every
        wake-up is lost, like a web process that crashed between its commit and its wake-up."""
        dead = f"redis://127.0.0.1:{free_port()}/0"
        env = {"CELERY_BROKER_URL": dead, "REDIS_URL": dead}
        script = SHELL_PRELUDE + textwrap.dedent(script)
        return self.stack.manage(name, "shell", "-c", script, env=env)

    def send_deliver_task(self, *delivery_ids: int) -> str:
        """Send a worker step naming these deliveries straight to the broker, as a worker that
        retries an interrupted step does."""
        return self.celery.send_task("allocation.deliver", args=[list(delivery_ids)]).id

    @property
    def celery(self) -> Celery:
        """A Celery client on the private broker, as a web process or the sweeper has."""
        if self._celery is None:
            self._celery = Celery("e2e-faults-client", broker=self.broker.url, set_as_current=False)
            self._celery.conf.update(task_serializer="json", task_ignore_result=True)
        return self._celery

    def close(self) -> None:
        if self._celery is not None:
            self._celery.close()

    def wait_for_task(self, task_id: str, timeout: float = CONVERGENCE_TIMEOUT) -> None:
        wait_until(
            lambda: f"Task allocation.deliver[{task_id}] succeeded" in self.stack.worker.logs(),
            timeout,
            f"the worker to run task {task_id}",
            pause=0.1,
        )


@dataclass(frozen=True)
class Delivery:
    id: int
    handler: str
    status: str
    attempts: int
    last_error: str
    event_id: str
    event_type: str
    version: int
    payload: dict


SHELL_PRELUDE = """
from allocation.apps import get_bus, get_runner
from allocation.domain.commands import Allocate, ChangeBatchQuantity, CreateBatch
from allocation.models import Delivery
bus = get_bus()
"""


@pytest.fixture(scope="module")
def faults() -> Iterator[Faults]:
    broker = PrivateRedis(log_dir=ARTIFACTS_ROOT / ARTIFACTS_SUBFOLDER)
    config = StackConfig(
        database=DATABASE,
        redis_url=broker.url,
        env=FAULT_ENV,
        processes=("web", "worker", "beat"),
        worker_concurrency=2,
        web_workers=1,
        artifacts=ARTIFACTS_SUBFOLDER,
        after_migrate=create_effects_table,
    )
    try:
        broker.start()
        with running_stack(config) as stack:
            # Beat -> broker -> worker -> sweeper: the whole sweeping path works.
            stack.worker.wait_for_log(SWEEP_SUCCEEDED, 30)
            faults = Faults(stack, broker)
            try:
                yield faults
            finally:
                faults.close()
    finally:
        broker.close()


@pytest.fixture(autouse=True)
def converged(faults: Faults) -> Iterator[None]:
    """Each test starts on a running, quiet stack, and leaves every delivery delivered."""
    faults.restore()
    faults.wait_until_quiet()
    yield
    faults.restore()
    faults.release_held()
    faults.wait_until_quiet()


def lost_wake_ups(process: Process) -> int:
    """How many commits of `process` could not wake a worker."""
    return process.log().count(WAKE_UP_LOST)


def statuses(deliveries: list[Delivery]) -> dict[str, str]:
    return {d.handler: d.status for d in deliveries}


# --- the tests ----------------------------------------------------------------------------------


def due_now(faults: Faults, where: str, *params: Any) -> tuple[int, int]:
    """(deliveries matching `where`, how many of them are due now)."""
    return faults.query(
        "SELECT count(*), count(*) FILTER (WHERE d.next_attempt_at <= now())"
        " FROM allocation_delivery d JOIN allocation_storedevent e ON e.id = d.event_id"
        f" WHERE {where}",
        *params,
    )[0]


def test_a_broker_outage_delays_delivery_and_loses_nothing(faults, unique):
    api, broker, stack = faults.api, faults.broker, faults.stack
    sku, batch, order = unique("sku"), unique("batch"), unique("order")
    assert api.add_batch(batch, sku, 10).status == 201
    faults.wait_until_idle()  # see test_the_worker_survives_a_broker_restart_mid_task
    broker.kill()
    web_log_start = len(stack.web.log())

    response = api.allocate(order, sku, 2)

    # The write committed; waking a worker failed; nothing could deliver its events.
    assert response.status == 202, response
    assert faults.batch_of(order) == [batch]
    assert WAKE_UP_LOST in stack.web.log()[web_log_start:]
    assert api.allocations(order).status == 404
    pending = statuses(faults.deliveries_of_order(order))
    assert pending.keys() >= ALLOCATED_HANDLERS
    assert set(pending.values()) == {"pending"}
    # Due at once: the first sweep after the broker returns takes them, no lease to wait out.
    total, due = due_now(faults, "e.payload->>'orderid' = %s", order)
    assert due == total > 0

    broker.start()
    subscription = Subscription(broker.client, LINE_ALLOCATED)
    try:
        # The worker and beat reconnect (with backoff) and the sweep delivers.
        wait_until(
            lambda: api.batchref_of(order) == batch,
            CONVERGENCE_TIMEOUT,
            f"{order} in the read model after the broker came back",
            pause=0.2,
        )
        subscription.wait_for(timeout=CONVERGENCE_TIMEOUT, orderid=order)
        wait_until(
            lambda: set(statuses(faults.deliveries_of_order(order)).values()) == {"done"},
            CONVERGENCE_TIMEOUT,
            f"every delivery of {order} to be done",
            pause=0.2,
        )
        subscription.collect(1.0)  # a repeat would have been published before its done-mark
        published = subscription.matching(orderid=order)
    finally:
        subscription.close()

    assert [(m["batchref"], m["qty"]) for m in published] == [(batch, 2)]
    # Reconnected, not restarted.
    assert (stack.worker.name, stack.beat.name) == ("celery-worker", "celery-beat")
    assert stack.worker.alive() and stack.beat.alive()


def test_a_worker_killed_mid_delivery_is_redelivered_and_its_effect_happens_once(faults, unique):
    api, stack = faults.api, faults.stack
    sku, batch, order = unique("sku"), unique("batch"), unique(f"{SLOW_PREFIX}order")
    assert api.add_batch(batch, sku, 10).status == 201
    with faults.gate(order):
        assert api.allocate(order, sku, 1).status == 202
        stack.worker.wait_for_log(rf"slow effect started {order}\b", 60, stream="both")
        stack.kill("worker")  # SIGKILL, the main process and its pool children at once

        assert faults.effects(order) == []
        (slow,) = [d for d in faults.deliveries_of_order(order) if d.handler == SLOW_EFFECT]
        assert (slow.status, slow.attempts) == ("pending", 1)  # the run that died was counted

    stack.start("worker")

    wait_until(
        lambda: faults.delivery(slow.id).status == "done",
        CONVERGENCE_TIMEOUT,
        f"the slow effect of {order} to be delivered again",
        pause=0.2,
    )
    assert faults.effects(order) == [slow.event_id]
    assert faults.delivery(slow.id).attempts == 2
    assert api.batchref_of(order) == batch


def test_deliveries_lost_at_commit_are_delivered_by_the_sweep_alone(faults, unique):
    api, broker = faults.api, faults.broker
    sku, batch, chain = unique("sku"), unique("batch"), unique("lost-at-commit")
    orders = [unique(f"order{n}") for n in range(4)]
    subscription = Subscription(broker.client, LINE_ALLOCATED)
    try:
        shell = faults.run_with_lost_wake_ups(
            "lost-at-commit",
            f"""
            bus.handle(CreateBatch({batch!r}, {sku!r}, 100, None), correlation_id={chain!r})
            for n, orderid in enumerate({orders!r}):
                batchref = bus.handle(Allocate(orderid, {sku!r}, n + 1), correlation_id={chain!r})
                print("ALLOCATED", orderid, batchref)
            """,
        )

        assert shell.log("stdout").count(f" {batch}\n") == len(orders), shell.log("stdout")
        # Every commit's wake-up was lost, and every delivery written.
        assert lost_wake_ups(shell) == 1 + len(orders)
        written = [d for d in faults.deliveries_of_chain(chain) if d.event_type == "Allocated"]
        for orderid in orders:
            handlers = {d.handler for d in written if d.payload["orderid"] == orderid}
            assert handlers >= ALLOCATED_HANDLERS, (orderid, handlers)

        wait_until(
            lambda: {d.status for d in faults.deliveries_of_chain(chain)} == {"done"},
            CONVERGENCE_TIMEOUT,
            "the sweep to deliver every delivery of the chain",
            pause=0.2,
        )
        for orderid in orders:
            assert api.batchref_of(orderid) == batch
            subscription.wait_for(timeout=CONVERGENCE_TIMEOUT, orderid=orderid)
        subscription.collect(1.0)
    finally:
        subscription.close()
    published = [m["orderid"] for m in subscription.matching(batchref=batch)]
    assert sorted(published) == sorted(orders)


def test_a_failing_handler_ends_dead_and_its_siblings_are_delivered(faults, unique):
    api, stack = faults.api, faults.stack
    sku, batch, order = unique("sku"), unique("batch"), unique(f"{FAIL_PREFIX}order")
    assert api.add_batch(batch, sku, 10).status == 201

    assert api.allocate(order, sku, 3).status == 202

    wait_until(
        lambda: statuses(faults.deliveries_of_order(order)).get(ALWAYS_FAILS) == "dead",
        CONVERGENCE_TIMEOUT,
        f"the always_fails delivery of {order} to be dead",
        pause=0.2,
    )
    by_handler = {d.handler: d for d in faults.deliveries_of_order(order)}
    dead = by_handler.pop(ALWAYS_FAILS)
    assert dead.attempts == MAX_ATTEMPTS
    assert dead.last_error.startswith("Traceback (most recent call last)"), dead.last_error
    assert f"RuntimeError: always_fails refuses {order}" in dead.last_error
    # Its siblings (the projection, the line_allocated publish, the slow handler that does
    # nothing for this order, and whatever else subscribes) were each delivered once.
    assert ALLOCATED_HANDLERS - {ALWAYS_FAILS} <= by_handler.keys()
    assert {(d.status, d.attempts) for d in by_handler.values()} == {("done", 1)}
    assert api.batchref_of(order) == batch

    listed = stack.manage("deliveries-dead", "deliveries", "dead").log("stdout")
    (line,) = [line for line in listed.splitlines() if line.startswith(f"{dead.id}\t")]
    assert ALWAYS_FAILS in line
    assert f"{MAX_ATTEMPTS} attempts" in line
    assert f"RuntimeError: always_fails refuses {order}" in line


def test_the_same_delivery_sent_twice_at_once_runs_its_effect_once(faults, unique):
    stack = faults.stack
    sku, batch, chain = unique("sku"), unique("batch"), unique("sent-twice")
    order = unique(f"{SLOW_PREFIX}twice")
    with faults.no_sweep():
        faults.run_with_lost_wake_ups(
            "sent-twice",
            f"""
            chain = {chain!r}
            bus.handle(CreateBatch({batch!r}, {sku!r}, 10, None), correlation_id=chain)
            print("ALLOCATED", bus.handle(Allocate({order!r}, {sku!r}, 1), correlation_id=chain))
            """,
        )
        faults.hold(chain)
    (slow,) = [d for d in faults.deliveries_of_order(order) if d.handler == SLOW_EFFECT]
    assert (slow.status, slow.attempts) == ("pending", 0)  # no step ever took it
    log_start = len(stack.worker.log())

    with faults.gate(order):
        first = faults.send_deliver_task(slow.id)
        stack.worker.wait_for_log(rf"slow effect started {order}\b", 60, stream="both")
        second = faults.send_deliver_task(slow.id)  # while the first holds it
        faults.wait_for_task(second)
    faults.wait_for_task(first)

    assert faults.delivery(slow.id).status == "done"
    # Each copy counts an attempt unless it finds the row locked by the one running; the
    # second copy usually does, but may start between the first's count and its run.
    assert faults.delivery(slow.id).attempts in (1, 2)
    assert len(faults.effects(order)) == 1
    assert stack.worker.log()[log_start:].count(f"slow effect started {order}") == 1


def test_read_model_deliveries_applied_in_reverse_order_converge(faults, unique):
    api, stack = faults.api, faults.stack
    sku, a, b, order = unique("sku"), unique("batch-a"), unique("batch-b"), unique("o1")
    later = (date.today() + timedelta(days=7)).isoformat()
    chain = unique("out-of-order")
    with faults.no_sweep():
        shell = faults.run_with_lost_wake_ups(
            "out-of-order",
            f"""
            chain = {chain!r}
            bus.handle(CreateBatch({a!r}, {sku!r}, 10, None), correlation_id=chain)
            bus.handle(CreateBatch({b!r}, {sku!r}, 10, {later!r}), correlation_id=chain)
            print("ALLOCATED", bus.handle(Allocate({order!r}, {sku!r}, 10), correlation_id=chain))
            bus.handle(ChangeBatchQuantity({a!r}, 5), correlation_id=chain)
            reallocate = Delivery.objects.get(event__correlation_id=chain, handler={REALLOCATE!r})
            get_runner().deliver([reallocate.pk])
            reallocate.refresh_from_db()
            print("REALLOCATE", reallocate.status)
            """,
        )
        faults.hold(chain)
    assert f"ALLOCATED {a}\n" in shell.log("stdout")
    assert "REALLOCATE done\n" in shell.log("stdout")
    assert faults.batch_of(order) == [b]
    assert api.allocations(order).status == 404  # no projection delivered yet

    chain_deliveries = faults.deliveries_of_chain(chain)
    lines = [d for d in chain_deliveries if d.handler in (PROJECT_ADD, PROJECT_REMOVE)]
    described = [(d.event_type, d.payload["batchref"], d.status) for d in lines]
    assert described == [
        ("Allocated", a, "pending"),
        ("Deallocated", a, "pending"),
        ("Allocated", b, "pending"),
    ]

    for delivery in reversed(lines):
        faults.wait_for_task(faults.send_deliver_task(delivery.id))
        assert faults.delivery(delivery.id).status == "done"
        # The newest state arrived first; the older events that follow do not overwrite it.
        assert api.batchref_of(order) == b

    # The batches' stock view too (BatchCreated a and b, BatchQuantityChanged a), newest first.
    batches = [
        d
        for d in chain_deliveries
        if d.handler.startswith(READ_MODEL_PREFIX) and d.event_type.startswith("Batch")
    ]
    assert [d.status for d in batches] == ["pending"] * len(batches)
    for delivery in reversed(batches):
        faults.wait_for_task(faults.send_deliver_task(delivery.id))
        assert faults.delivery(delivery.id).status == "done"

    faults.release_held()
    faults.wait_until_quiet()
    checked = stack.manage("check-readmodels", "check_readmodels").log("stdout")
    assert "Read models match the write side." in checked


def test_the_worker_survives_a_broker_restart_mid_task(faults, unique):
    api, broker, stack = faults.api, faults.broker, faults.stack
    sku, batch, order = unique("sku"), unique("batch"), unique(f"{SLOW_PREFIX}outage")
    assert api.add_batch(batch, sku, 10).status == 201
    with faults.gate(order):
        assert api.allocate(order, sku, 1).status == 202
        stack.worker.wait_for_log(rf"slow effect started {order}\b", 60, stream="both")
        log_start = len(stack.worker.log())
        broker.kill()
        broker.start()

    # Either the worker reconnects and runs a sweep again, or it has exited.
    wait_until(
        lambda: (
            not stack.worker.alive()
            or (
                re.search(r"Connected to redis", stack.worker.log()[log_start:])
                and re.search(SWEEP_SUCCEEDED, stack.worker.log()[log_start:])
            )
        ),
        CONVERGENCE_TIMEOUT,
        "the worker to reconnect to the broker and sweep",
        pause=0.2,
    )
    assert stack.worker.alive(), f"the worker exited with {stack.worker.popen.returncode}"
    wait_until(
        lambda: faults.effects(order) and faults.pending() == 0,
        CONVERGENCE_TIMEOUT,
        f"the deliveries of {order} to be done",
        pause=0.2,
    )
    assert len(faults.effects(order)) == 1
