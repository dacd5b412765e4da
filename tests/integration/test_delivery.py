"""Delivery state on PostgreSQL: claiming, retries, dead letters, sweeping, out-of-order events."""

import itertools
import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from allocation import models as orm
from allocation import sweeper
from allocation.bootstrap import EVENT_HANDLERS, bootstrap
from allocation.domain import commands, events
from allocation.messagebus import handler_name
from readmodels import projections
from readmodels.consistency import CHECKS
from readmodels.models import BatchStock, OrderAllocation
from readmodels.selectors import allocations_for_order

pytestmark = pytest.mark.django_db(transaction=True)

LINE_PROJECTIONS = [
    handler_name(projections.add_allocation_to_read_model),
    handler_name(projections.remove_allocation_from_read_model),
]
FAILURES = []
BROKEN = threading.Event()


def flaky_handler(event: events.Allocated) -> None:
    """Fails for as long as BROKEN is set (a bug that a later deployment fixes)."""
    if BROKEN.is_set():
        FAILURES.append(event)
        raise RuntimeError("this handler always fails")


def make_due(**filters):
    orm.Delivery.objects.filter(**filters).update(next_attempt_at=timezone.now())


def bus_with(handler, event_type=events.Allocated):
    """The real bus plus one handler, delivering in-process right after commit."""
    routing = {k: list(v) for k, v in EVENT_HANDLERS.items()}
    routing[event_type].append(handler)
    bus = bootstrap(event_handlers=routing, dispatch=lambda ids: bus.deliver_all(ids))
    return bus


def test_a_lost_dispatch_is_delivered_by_the_sweeper_alone():
    lost = []
    bus = bootstrap(dispatch=lost.extend)  # commits happen, their broker messages vanish
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    bus.handle(commands.Allocate("o1", "LAMP", 2))
    assert lost and allocations_for_order("o1") == []

    # nothing is due before its lease runs out: the dispatch may still be on its way
    assert sweeper.sweep(bus.deliver_all) == 0
    make_due(status="pending")
    assert sweeper.sweep(bus.deliver_all) == len(lost)

    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b1"}]
    assert set(orm.Delivery.objects.values_list("status", flat=True)) == {"done"}


def lost_backlog(orders: int) -> None:
    """`orders` allocations whose broker messages were lost, all due for the sweeper."""
    quiet = bootstrap(dispatch=[].extend)
    quiet.handle(commands.CreateBatch("b1", "LAMP", 1000, None))
    for i in range(orders):
        quiet.handle(commands.Allocate(f"o{i}", "LAMP", 1))
    make_due(status="pending")


def test_beats_sweep_takes_batch_after_batch_of_a_backlog_within_its_interval(settings):
    lost_backlog(orders=4)
    due = orm.Delivery.objects.filter(status="pending").count()
    settings.ALLOCATION_SWEEP_BATCH = 5
    settings.ALLOCATION_SWEEP_CHUNK = 5
    messages = []

    assert sweeper.sweep_for(messages.append, seconds=0) == 5  # out of time: one batch
    make_due(status="pending")
    assert sweeper.sweep_for(messages.append, seconds=30) == due  # every batch, then stops

    assert due > 10 and [len(m) for m in messages[1:]] == [5] * (due // 5) + [due % 5]


def test_two_sweepers_never_claim_the_same_delivery(bus):
    lost_backlog(orders=60)
    claimed = []
    start = threading.Barrier(4)

    def claim():
        start.wait()
        try:
            for _ in range(10):
                claimed.append(sweeper.claim_due(7))
        finally:
            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    ids = list(itertools.chain.from_iterable(claimed))
    assert len(ids) == len(set(ids)) == orm.Delivery.objects.count()


def test_a_failing_handler_backs_off_then_goes_dead_while_its_siblings_deliver(settings):
    settings.ALLOCATION_DELIVERY_MAX_ATTEMPTS = 3
    bus = bus_with(flaky_handler)
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    FAILURES.clear()
    BROKEN.set()

    bus.handle(commands.Allocate("o1", "LAMP", 2))

    failing = orm.Delivery.objects.get(handler__endswith="flaky_handler")
    assert (failing.status, failing.attempts) == ("pending", 1)
    assert failing.next_attempt_at > timezone.now()  # backing off
    assert "this handler always fails" in failing.last_error
    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b1"}]  # sibling done
    for _ in range(5):
        make_due(pk=failing.pk)
        sweeper.sweep(bus.deliver_all)
    failing.refresh_from_db()
    assert (failing.status, failing.attempts) == ("dead", 3)
    assert len(FAILURES) == 3  # no attempt after it died
    assert "RuntimeError" in failing.last_error  # the traceback is kept

    # the bug is fixed, and an operator retries the dead delivery
    BROKEN.clear()
    assert sweeper.retry([failing.pk]) == [failing.pk]
    bus.deliver(failing.pk)
    failing.refresh_from_db()
    assert (failing.status, failing.attempts) == ("done", 1)


def test_a_delivery_runs_once_even_when_two_workers_get_it_at_once():
    runs = []
    gate = threading.Event()

    def slow_effect(event: events.Allocated) -> None:
        runs.append(event.orderid)
        gate.wait(5)  # hold the delivery's row lock while the second worker tries

    bus = bus_with(slow_effect)
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    bus.dispatch = [].extend  # the copies delivered below are the only ones
    bus.handle(commands.Allocate("o1", "LAMP", 2))
    delivery = orm.Delivery.objects.get(handler__endswith="slow_effect")

    def deliver():
        try:
            bus.deliver(delivery.pk)
        finally:
            connection.close()

    first = threading.Thread(target=deliver)
    first.start()
    deadline = time.monotonic() + 5
    while not runs and time.monotonic() < deadline:
        time.sleep(0.01)
    deliver()  # the second copy finds the row locked and leaves it
    gate.set()
    first.join(10)
    deliver()  # a late third copy finds it done

    delivery.refresh_from_db()
    assert runs == ["o1"]
    assert (delivery.status, delivery.attempts) == ("done", 1)


def test_projections_converge_whatever_the_order_of_the_events(bus):
    """Allocated, Deallocated, Allocated again (on another batch): every order of delivery."""
    lost = []
    quiet = bootstrap(dispatch=lost.extend)
    quiet.handle(commands.CreateBatch("a", "LAMP", 10, None))
    quiet.handle(commands.CreateBatch("b", "LAMP", 10, "2030-01-01"))
    quiet.handle(commands.Allocate("o1", "LAMP", 8))
    quiet.handle(commands.ChangeBatchQuantity("a", 5))  # o1 deallocated from a...
    realloc = orm.Delivery.objects.get(handler__endswith="reallocate")
    quiet.deliver(realloc.pk)  # ...and reallocated to b
    batch_events = orm.Delivery.objects.filter(event__type__startswith="Batch")
    quiet.deliver_all(list(batch_events.values_list("pk", flat=True)))
    projections = list(
        orm.Delivery.objects.filter(handler__in=LINE_PROJECTIONS)
        .order_by("event__version")
        .values_list("pk", "event__type")
    )
    assert [t for _, t in projections] == ["Allocated", "Deallocated", "Allocated"]

    for order in itertools.permutations([pk for pk, _ in projections]):
        OrderAllocation.objects.all().delete()
        BatchStock.objects.update(allocated=0)
        orm.Delivery.objects.filter(pk__in=order).update(status="pending")
        for pk in order:
            quiet.deliver(pk)
        assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b"}], order
        assert [d for check in CHECKS.values() for d in check()] == []


def test_a_late_allocated_cannot_resurrect_a_cancelled_line(bus):
    lost = []
    quiet = bootstrap(dispatch=lost.extend)
    quiet.handle(commands.CreateBatch("a", "LAMP", 10, None))
    quiet.handle(commands.Allocate("o1", "LAMP", 3))
    quiet.handle(commands.CancelAllocation("o1", "LAMP"))
    allocated, cancelled = orm.Delivery.objects.filter(handler__in=LINE_PROJECTIONS).order_by(
        "event__version"
    )

    quiet.deliver(cancelled.pk)
    quiet.deliver(allocated.pk)

    assert allocations_for_order("o1") == []
    assert OrderAllocation.objects.get(orderid="o1").batchref is None  # the tombstone


def test_prune_removes_old_finished_deliveries_and_keeps_the_event_log(bus):
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    bus.handle(commands.Allocate("o1", "LAMP", 1))
    events_before = orm.StoredEvent.objects.count()
    orm.Delivery.objects.update(done_at=timezone.now() - timedelta(days=40))

    assert sweeper.prune(timedelta(days=30)) > 0
    assert not orm.Delivery.objects.exists()
    assert orm.StoredEvent.objects.count() == events_before


def writes_then_fails(event: events.Allocated) -> None:
    OrderAllocation.objects.create(orderid="ghost", sku=event.sku, qty=1, version=0)
    raise RuntimeError("fails after writing")


def test_deliveries_of_one_batch_fail_alone_and_undo_only_their_own_work():
    bus = bus_with(writes_then_fails)
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    bus.dispatch = [].extend  # deliver the whole commit below as one batch, by hand
    bus.handle(commands.Allocate("o1", "LAMP", 2))
    batch = list(orm.Delivery.objects.filter(status="pending").values_list("pk", flat=True))
    assert len(batch) == 4  # projection, publish, stream, writes_then_fails

    bus.deliver_all(batch)

    statuses = dict(orm.Delivery.objects.filter(pk__in=batch).values_list("handler", "status"))
    failing = orm.Delivery.objects.get(handler__endswith="writes_then_fails")
    assert (failing.status, failing.attempts) == ("pending", 1)
    assert [s for h, s in statuses.items() if h != failing.handler] == ["done"] * 3
    assert not OrderAllocation.objects.filter(orderid="ghost").exists()
    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b1"}]


def test_a_delivery_whose_runs_keep_dying_is_given_up_on(settings):
    """A handler that kills its process never records a failure; its attempts still count."""
    settings.ALLOCATION_DELIVERY_MAX_ATTEMPTS = 3
    lost = []
    bus = bootstrap(dispatch=lost.extend)
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    bus.handle(commands.Allocate("o1", "LAMP", 2))
    publish = orm.Delivery.objects.get(handler__endswith="publish_allocated_event")
    # three runs started (each counted its attempt) and died before they could finish
    orm.Delivery.objects.filter(pk=publish.pk).update(attempts=3)

    bus.deliver_all(lost)

    publish.refresh_from_db()
    assert publish.status == "dead"
    assert "Gave up: 3 attempts did not finish" in publish.last_error
    others = orm.Delivery.objects.exclude(pk=publish.pk).values_list("status", "attempts")
    assert set(others) == {("done", 1)}


def test_projections_commit_before_a_slow_external_handler_runs():
    seen_by_slow_handler = []

    def slow_external(event: events.Allocated) -> None:
        # Another connection, as a reader would see it: the projection has committed already.
        from django.db import connections

        other = connections.create_connection("default")
        try:
            with other.cursor() as cursor:
                cursor.execute(
                    "SELECT batchref FROM readmodels_orderallocation WHERE orderid = %s",
                    [event.orderid],
                )
                seen_by_slow_handler.append(cursor.fetchone())
        finally:
            other.close()

    bus = bus_with(slow_external)
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    bus.handle(commands.Allocate("o1", "LAMP", 2))

    assert seen_by_slow_handler == [("b1",)]


DEADLOCKS = []


def deadlocks_once(event: events.Allocated) -> None:
    """Loses a deadlock with another worker's batch the first time it runs."""
    from django.db import OperationalError
    from psycopg.errors import DeadlockDetected

    if not DEADLOCKS:
        DEADLOCKS.append(event.orderid)
        raise OperationalError("deadlock detected") from DeadlockDetected("deadlock detected")


def test_a_delivery_that_loses_a_deadlock_in_a_shared_batch_runs_again_at_once():
    DEADLOCKS.clear()
    bus = bus_with(deadlocks_once)
    bus.transaction_groups[0] |= {handler_name(deadlocks_once)}  # in the projections' batch
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))

    bus.handle(commands.Allocate("o1", "LAMP", 2))

    loser = orm.Delivery.objects.get(handler__endswith="deadlocks_once")
    assert DEADLOCKS == ["o1"]
    assert (loser.status, loser.last_error) == ("done", "")  # no failure, no backoff
    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b1"}]
