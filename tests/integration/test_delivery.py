"""Delivery state on PostgreSQL: worker steps, retries, dead letters, the sweep, sets applied
at once, and events in any order."""

import contextlib
import itertools
import random
import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from allocation import models as orm
from allocation import sweeper
from allocation.bootstrap import (
    EVENT_HANDLERS,
    HANDLER_NAMES,
    TRANSACTION_GROUPS,
    GroupSpec,
    bootstrap,
    handler_name,
)
from allocation.domain import commands, events
from allocation.domain.model import DomainError
from allocation.outbox import DjangoDeliveryRepository
from allocation.tasks import sweep_task
from allocation.unit_of_work import NestedTransaction
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


def wired(*extra_handlers, event_type=events.Allocated, held=False, groups=TRANSACTION_GROUPS):
    """The real bus and runner, plus `extra_handlers` of `event_type`. A worker step runs
    in-process after each commit; `held`: none runs until the test runs one (the wake-ups
    are lost)."""
    routing = {k: list(v) for k, v in EVENT_HANDLERS.items()}
    routing[event_type] += extra_handlers
    box = []
    wiring = bootstrap(
        event_handlers=routing,
        wake=[].extend if held else lambda deliveries: box[0].runner.run_due(),
        groups=groups,
    )
    box.append(wiring)
    return wiring


def all_done() -> bool:
    return set(orm.Delivery.objects.values_list("status", flat=True)) == {"done"}


def views_match_the_write_side() -> list:
    return [d for check in CHECKS.values() for d in check()]


def test_a_lost_wake_up_is_delivered_by_the_next_sweep():
    held = wired(held=True)  # commits happen, their wake-ups vanish (broker down, say)
    held.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    held.bus.handle(commands.Allocate("o1", "LAMP", 2))
    assert allocations_for_order("o1") == []

    # Due from their commit on: the next sweep takes them all, with no lease to wait out.
    assert sweep_task() == orm.Delivery.objects.count()

    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b1"}]
    assert all_done()


def lost_backlog(orders: int):
    """`orders` allocations whose wake-ups were lost, all due."""
    held = wired(held=True)
    held.bus.handle(commands.CreateBatch("b1", "LAMP", 1000, None))
    for i in range(orders):
        held.bus.handle(commands.Allocate(f"o{i}", "LAMP", 1))
    return held


def test_beats_sweep_takes_step_after_step_of_a_backlog_within_its_interval(settings):
    lost_backlog(orders=12)
    due = orm.Delivery.objects.count()
    settings.ALLOCATION_DELIVERY_BATCH = 5

    assert sweep_task() == due > 10  # a full step means more may be due: it steps again

    assert all_done()
    assert views_match_the_write_side() == []


def test_two_steps_never_take_the_same_delivery():
    lost_backlog(orders=60)
    taken = []
    start = threading.Barrier(4)

    def take():
        start.wait()
        try:
            for _ in range(10):
                taken.append([d.id for d in DjangoDeliveryRepository().take_due(7)])
        finally:
            connection.close()

    threads = [threading.Thread(target=take) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    ids = list(itertools.chain.from_iterable(taken))
    assert len(ids) == len(set(ids)) == orm.Delivery.objects.count()
    # Each was counted once and leased: none is due again until its lease runs out.
    assert set(orm.Delivery.objects.values_list("attempts", flat=True)) == {1}
    assert DjangoDeliveryRepository().take_due(100) == []


def test_a_failing_handler_backs_off_then_goes_dead_while_its_siblings_deliver(settings):
    settings.ALLOCATION_DELIVERY_MAX_ATTEMPTS = 3
    settings.ALLOCATION_DELIVERY_BACKOFF_BASE = 60  # far beyond the test: it waits, for sure
    wiring = wired(flaky_handler)
    wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    FAILURES.clear()
    BROKEN.set()

    before = timezone.now()
    wiring.bus.handle(commands.Allocate("o1", "LAMP", 2))

    failing = orm.Delivery.objects.get(handler__endswith="flaky_handler")
    assert (failing.status, failing.attempts) == ("pending", 1)
    assert failing.next_attempt_at > before + timedelta(seconds=29)  # backing off
    assert "this handler always fails" in failing.last_error
    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b1"}]  # sibling done
    for _ in range(5):
        make_due(pk=failing.pk)
        wiring.runner.run_due()
    failing.refresh_from_db()
    assert (failing.status, failing.attempts) == ("dead", 3)
    assert len(FAILURES) == 3  # no attempt after it died
    assert "RuntimeError" in failing.last_error  # the traceback is kept

    # the bug is fixed, and an operator retries the dead delivery
    BROKEN.clear()
    assert sweeper.retry([failing.pk]) == [failing.pk]
    wiring.runner.run_due()
    failing.refresh_from_db()
    assert (failing.status, failing.attempts) == ("done", 1)


def test_a_delivery_runs_once_even_when_two_workers_get_it_at_once():
    runs = []
    gate, running = threading.Event(), threading.Event()

    def slow_effect(event: events.Allocated) -> None:
        runs.append(event.orderid)
        running.set()
        gate.wait(60)  # hold the delivery's row lock while the second worker tries

    wiring = wired(slow_effect, held=True)
    wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    wiring.bus.handle(commands.Allocate("o1", "LAMP", 2))
    delivery = orm.Delivery.objects.get(handler__endswith="slow_effect")

    def deliver():
        try:
            wiring.runner.deliver([delivery.pk])
        finally:
            connection.close()

    first = threading.Thread(target=deliver)
    first.start()
    try:
        assert running.wait(60)
        deliver()  # the second copy finds the row locked and leaves it
    finally:
        gate.set()
        first.join(60)
    deliver()  # a late third copy finds it done

    delivery.refresh_from_db()
    assert runs == ["o1"]
    assert (delivery.status, delivery.attempts) == ("done", 1)


def test_projections_converge_whatever_the_order_of_the_events():
    """Allocated, Deallocated, Allocated again (on another batch): every order of delivery,
    one at a time and all three in one set."""
    held = wired(held=True)
    held.bus.handle(commands.CreateBatch("a", "LAMP", 10, None))
    held.bus.handle(commands.CreateBatch("b", "LAMP", 10, "2030-01-01"))
    held.bus.handle(commands.Allocate("o1", "LAMP", 8))
    held.bus.handle(commands.ChangeBatchQuantity("a", 5))  # o1 deallocated from a...
    realloc = orm.Delivery.objects.get(handler=HANDLER_NAMES[EVENT_HANDLERS[events.Deallocated][1]])
    held.runner.deliver([realloc.pk])  # ...and reallocated to b
    batch_events = orm.Delivery.objects.filter(event__type__startswith="Batch")
    held.runner.deliver(list(batch_events.values_list("pk", flat=True)))
    line_projections = list(
        orm.Delivery.objects.filter(handler__in=LINE_PROJECTIONS)
        .order_by("event__version")
        .values_list("pk", "event__type")
    )
    assert [t for _, t in line_projections] == ["Allocated", "Deallocated", "Allocated"]
    pks = [pk for pk, _ in line_projections]

    for order in [*itertools.permutations(pks), "together"]:
        OrderAllocation.objects.all().delete()
        BatchStock.objects.update(allocated=0)
        orm.Delivery.objects.filter(pk__in=pks).update(status="pending")
        if order == "together":
            assert held.runner.deliver(pks).taken == 3
        else:
            for pk in order:
                held.runner.deliver([pk])
        assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b"}], order
        assert views_match_the_write_side() == [], order


def test_sets_of_any_size_and_order_give_the_views_that_one_at_a_time_gives():
    rng = random.Random(7)
    held = wired(held=True)
    for sku in ("LAMP", "CHAIR"):
        held.bus.handle(commands.CreateBatch(f"{sku}-now", sku, 30, None))
        held.bus.handle(commands.CreateBatch(f"{sku}-later", sku, 30, "2030-01-01"))
    for i in range(40):
        sku = rng.choice(["LAMP", "CHAIR"])
        choice = rng.random()
        if choice < 0.6:
            with contextlib.suppress(DomainError):  # allocated already, with another qty
                held.bus.handle(commands.Allocate(f"o{i % 15}", sku, rng.randint(1, 6)))
        elif choice < 0.8:
            with contextlib.suppress(DomainError):  # not allocated
                held.bus.handle(commands.CancelAllocation(f"o{rng.randrange(15)}", sku))
        else:
            held.bus.handle(commands.ChangeBatchQuantity(f"{sku}-now", rng.randint(5, 30)))
        # the reallocations of a change run now, as they would
        realloc = orm.Delivery.objects.filter(status="pending", handler="allocation.reallocate")
        held.runner.deliver(list(realloc.values_list("pk", flat=True)))
    projections_ = list(
        orm.Delivery.objects.filter(handler__startswith="read_model.").values_list("pk", flat=True)
    )
    assert len(projections_) > 40

    for _ in range(5):
        OrderAllocation.objects.all().delete()
        BatchStock.objects.all().delete()
        orm.Delivery.objects.filter(pk__in=projections_).update(status="pending")
        rng.shuffle(projections_)
        start = 0
        while start < len(projections_):
            size = rng.randint(1, 25)
            held.runner.deliver(projections_[start : start + size])
            start += size
        assert views_match_the_write_side() == []


def test_a_late_allocated_cannot_resurrect_a_cancelled_line():
    held = wired(held=True)
    held.bus.handle(commands.CreateBatch("a", "LAMP", 10, None))
    held.bus.handle(commands.Allocate("o1", "LAMP", 3))
    held.bus.handle(commands.CancelAllocation("o1", "LAMP"))
    allocated, cancelled = orm.Delivery.objects.filter(handler__in=LINE_PROJECTIONS).order_by(
        "event__version"
    )

    held.runner.deliver([cancelled.pk])
    held.runner.deliver([allocated.pk])

    assert allocations_for_order("o1") == []
    assert OrderAllocation.objects.get(orderid="o1").batchref is None  # the tombstone


def test_prune_removes_old_finished_deliveries_and_keeps_the_event_log():
    wiring = wired()
    wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    wiring.bus.handle(commands.Allocate("o1", "LAMP", 1))
    events_before = orm.StoredEvent.objects.count()
    orm.Delivery.objects.update(done_at=timezone.now() - timedelta(days=40))

    assert sweeper.prune(timedelta(days=30)) > 0
    assert not orm.Delivery.objects.exists()
    assert orm.StoredEvent.objects.count() == events_before


def writes_then_fails(event: events.Allocated) -> None:
    OrderAllocation.objects.create(orderid="ghost", sku=event.sku, qty=1, version=0)
    raise RuntimeError("fails after writing")


def test_deliveries_of_one_step_fail_alone_and_undo_only_their_own_work():
    held = wired(writes_then_fails, held=True)
    held.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    held.bus.handle(commands.Allocate("o1", "LAMP", 2))
    step = list(orm.Delivery.objects.filter(status="pending").values_list("pk", flat=True))
    assert len(step) == 6  # projection, stream (BatchCreated); projection, publish, stream, ...

    assert held.runner.run_due().taken == 6

    statuses = dict(orm.Delivery.objects.filter(pk__in=step).values_list("pk", "status"))
    failing = orm.Delivery.objects.get(handler__endswith="writes_then_fails")
    assert (failing.status, failing.attempts) == ("pending", 1)
    assert [s for pk, s in statuses.items() if pk != failing.pk] == ["done"] * 5
    assert not OrderAllocation.objects.filter(orderid="ghost").exists()
    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b1"}]


def test_a_delivery_whose_runs_keep_dying_is_given_up_on(settings):
    """A handler that kills its process never records a failure; its attempts still count."""
    settings.ALLOCATION_DELIVERY_MAX_ATTEMPTS = 3
    held = wired(held=True)
    held.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    held.bus.handle(commands.Allocate("o1", "LAMP", 2))
    publish = orm.Delivery.objects.get(handler="redis.publish_line_allocated")
    # three steps took it (each counted its attempt) and died before they could finish
    orm.Delivery.objects.filter(pk=publish.pk).update(attempts=3)

    held.runner.run_due()

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

    wiring = wired(slow_external)
    wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    wiring.bus.handle(commands.Allocate("o1", "LAMP", 2))

    assert seen_by_slow_handler == [("b1",)]


DEADLOCKS = []


def deadlocks_once(event: events.Allocated) -> None:
    """Loses a deadlock with another worker's step the first time it runs."""
    from django.db import OperationalError
    from psycopg.errors import DeadlockDetected

    if not DEADLOCKS:
        DEADLOCKS.append(event.orderid)
        raise OperationalError("deadlock detected") from DeadlockDetected("deadlock detected")


def test_a_delivery_that_loses_a_deadlock_in_a_shared_set_runs_again_at_once():
    DEADLOCKS.clear()
    projections_group, *others = TRANSACTION_GROUPS
    in_the_projections_set = GroupSpec(
        (*projections_group.handlers, deadlocks_once), projections_group.together
    )
    wiring = wired(deadlocks_once, groups=[in_the_projections_set, *others])
    wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))

    wiring.bus.handle(commands.Allocate("o1", "LAMP", 2))

    loser = orm.Delivery.objects.get(handler__endswith="deadlocks_once")
    assert DEADLOCKS == ["o1"]
    assert (loser.status, loser.last_error) == ("done", "")  # no failure, no backoff
    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b1"}]


def test_the_bus_refuses_to_run_inside_someone_elses_transaction():
    wiring = wired()
    refused = pytest.raises(NestedTransaction, match=r"outside transaction\.atomic\(\)")
    with refused, transaction.atomic():
        wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    assert not orm.StoredEvent.objects.exists()


def test_events_leave_through_on_commit_once_the_transaction_has_committed():
    woken = []
    wiring = bootstrap(wake=woken.append)

    wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))

    [deliveries] = woken
    assert [d.handler for d in deliveries] == [
        "read_model.add_batch",
        "redis.append_to_event_stream",
    ]
    assert set(orm.Delivery.objects.filter(pk__in=[d.id for d in deliveries])) == set(
        orm.Delivery.objects.all()
    )


def moved_reallocate(event):
    """The reallocation, as if its module had moved: a new function, the same stable name."""
    from allocation.handlers import reallocate

    return reallocate(event)


def test_a_delivery_written_under_a_handlers_name_still_runs_after_the_handler_moves(
    monkeypatch,
):
    held = wired(held=True)  # today's code writes the deliveries...
    held.bus.handle(commands.CreateBatch("a", "LAMP", 10, None))
    held.bus.handle(commands.CreateBatch("b", "LAMP", 10, "2030-01-01"))
    held.bus.handle(commands.Allocate("o1", "LAMP", 8))
    held.runner.run_due()
    held.bus.handle(commands.ChangeBatchQuantity("a", 5))
    [written] = orm.Delivery.objects.filter(status="pending", handler="allocation.reallocate")

    # ...and the next release runs them, with the handler somewhere else.
    monkeypatch.setitem(HANDLER_NAMES, moved_reallocate, "allocation.reallocate")
    routing = {k: list(v) for k, v in EVENT_HANDLERS.items()}
    routing[events.Deallocated] = [
        moved_reallocate if h is EVENT_HANDLERS[events.Deallocated][1] else h
        for h in routing[events.Deallocated]
    ]
    released = bootstrap(event_handlers=routing, wake=[].extend)
    released.runner.run_due()
    released.runner.run_due()  # the Allocated of the reallocation, on the read model

    written.refresh_from_db()
    assert written.status == "done"
    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b"}]


def test_the_migration_renames_the_handlers_of_existing_deliveries():
    from importlib import import_module

    from django.apps import apps

    migration = import_module("allocation.migrations.0006_stable_handler_names")
    held = wired(held=True)
    held.bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    for new_name in ("read_model.add_batch", "redis.append_to_event_stream"):
        old_name = next(old for old, new in migration.RENAMED.items() if new == new_name)
        orm.Delivery.objects.filter(handler=new_name).update(handler=old_name)

    migration.rename(apps, None, migration.RENAMED)

    assert set(orm.Delivery.objects.values_list("handler", flat=True)) == {
        "read_model.add_batch",
        "redis.append_to_event_stream",
    }
    assert held.runner.run_due().taken == 2
    assert all_done()
