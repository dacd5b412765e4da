"""The message bus: routing, dependency injection, retries and delivery of events, on fakes."""

import threading
from types import SimpleNamespace

import pytest

from allocation import handlers, messagebus
from allocation.bootstrap import COMMAND_HANDLERS
from allocation.domain import commands, events
from allocation.domain.model import OrderLine
from allocation.messagebus import handler_name
from allocation.unit_of_work import TransactionConflict
from tests.unit.fakes import DONE, PENDING, UNIT_EVENT_HANDLERS, bootstrap_test_bus

TOMORROW = "2026-01-02"


def with_command_handler(command_type, handler):
    return {**COMMAND_HANDLERS, command_type: handler}


@pytest.fixture
def sleeps(monkeypatch):
    """The retry backoff, recorded instead of slept."""
    slept: list[float] = []
    monkeypatch.setattr(messagebus, "time", SimpleNamespace(sleep=slept.append))
    return slept


# --- commands -------------------------------------------------------------------------------


def test_a_command_goes_to_exactly_one_handler_and_its_result_comes_back():
    calls = []

    def allocate(cmd, uow):
        calls.append(("allocate", cmd))
        return "from allocate"

    def add_batch(cmd, uow):
        calls.append(("add_batch", cmd))

    bus, _, _, _ = bootstrap_test_bus(
        command_handlers={commands.Allocate: allocate, commands.CreateBatch: add_batch}
    )
    command = commands.Allocate("o1", "LAMP", 1)

    assert bus.handle(command) == "from allocate"
    assert calls == [("allocate", command)]


def test_a_handler_error_reaches_the_caller():
    def allocate(cmd, uow):
        raise ValueError("boom")

    bus, _, _, _ = bootstrap_test_bus(command_handlers={commands.Allocate: allocate})

    with pytest.raises(ValueError, match="boom"):
        bus.handle(commands.Allocate("o1", "LAMP", 1))


def test_a_command_without_a_handler_raises():
    bus, _, _, _ = bootstrap_test_bus(command_handlers={})

    with pytest.raises(LookupError, match="Allocate"):
        bus.handle(commands.Allocate("o1", "LAMP", 1))


def test_bootstrap_refuses_a_command_handler_needing_an_unknown_dependency():
    def allocate(cmd, uow, mailer):
        pass

    with pytest.raises(TypeError, match="mailer"):
        bootstrap_test_bus(command_handlers={commands.Allocate: allocate})


def test_bootstrap_refuses_an_event_handler_needing_an_unknown_dependency():
    def tell_someone(event, pager):
        pass

    with pytest.raises(TypeError, match="pager"):
        bootstrap_test_bus(event_handlers={events.OutOfStock: [tell_someone]})


def test_handlers_get_their_dependencies_by_parameter_name():
    received = []

    def inspect_dependencies(event, publish, notifications, uow):
        received.append((publish, notifications, uow.context.correlation_id))

    bus, _, notifications, publisher = bootstrap_test_bus(
        event_handlers={events.BatchCreated: [inspect_dependencies]}
    )

    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None), correlation_id="req-1")

    assert received == [(publisher, notifications, "req-1")]


# --- retries --------------------------------------------------------------------------------


def test_a_command_that_loses_a_race_is_retried_in_a_fresh_unit_of_work(sleeps):
    attempts = []

    def allocate_losing_twice(cmd, uow):
        attempts.append(uow)
        with uow:
            product = uow.products.get(cmd.sku, orderid=cmd.orderid)
            ref = product.allocate(OrderLine(cmd.orderid, cmd.sku, cmd.qty))
            uow.commit()
            if len(attempts) <= 2:
                raise TransactionConflict("a concurrent writer got there first")
        return ref

    bus, store, _, publisher = bootstrap_test_bus(
        command_handlers=with_command_handler(commands.Allocate, allocate_losing_twice),
        command_retries=3,
    )
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))

    ref = bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert ref == "b1"
    assert len({id(uow) for uow in attempts}) == 3
    assert len(sleeps) == 2
    # The attempts that lost left nothing behind.
    assert store.batch("b1").available_quantity == 90
    assert store.products["LAMP"].version_number == 2
    assert len(publisher.published) == 1


def test_a_command_that_keeps_losing_races_gives_up_after_command_retries(sleeps):
    attempts = []

    def allocate(cmd, uow):
        attempts.append(cmd)
        raise TransactionConflict("a concurrent writer got there first")

    bus, _, _, _ = bootstrap_test_bus(
        command_handlers={commands.Allocate: allocate}, command_retries=2
    )

    with pytest.raises(TransactionConflict):
        bus.handle(commands.Allocate("o1", "LAMP", 1))

    assert len(attempts) == 3  # the first attempt and two retries


def test_other_errors_are_not_retried(sleeps):
    attempts = []

    def allocate(cmd, uow):
        attempts.append(cmd)
        raise ValueError("not a race")

    bus, _, _, _ = bootstrap_test_bus(
        command_handlers={commands.Allocate: allocate}, command_retries=2
    )

    with pytest.raises(ValueError):
        bus.handle(commands.Allocate("o1", "LAMP", 1))

    assert len(attempts) == 1
    assert sleeps == []


# --- events ---------------------------------------------------------------------------------


def test_an_event_reaches_every_handler_even_when_one_of_them_fails():
    seen = []

    def note_before(event):
        seen.append(("before", event))

    def fail(event):
        raise RuntimeError("mail server down")

    def note_after(event):
        seen.append(("after", event))

    bus, store, _, _ = bootstrap_test_bus(
        event_handlers={events.OutOfStock: [note_before, fail, note_after]}
    )
    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))

    ref = bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert ref is None  # the command's caller does not see the event handler's failure
    out_of_stock = events.OutOfStock(sku="LAMP", version=1)
    assert seen == [("before", out_of_stock), ("after", out_of_stock)]
    state = {d.handler: (d.status, d.attempts) for d in store.deliveries.values()}
    assert state == {
        handler_name(note_before): (DONE, 1),
        handler_name(fail): (PENDING, 1),
        handler_name(note_after): (DONE, 1),
    }
    failed = next(d for d in store.deliveries.values() if d.handler == handler_name(fail))
    assert "mail server down" in failed.last_error


def test_a_failing_event_handler_leaves_no_changes_behind():
    def add_spare_batch_then_fail(event, uow):
        with uow:
            uow.products.get(event.sku).add_batch("spare", 1, None)
            uow.commit()
        raise RuntimeError("after the commit, before the done-mark")

    bus, store, _, _ = bootstrap_test_bus(
        event_handlers={events.OutOfStock: [add_spare_batch_then_fail]}
    )
    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))

    bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert [b.reference for b in store.products["LAMP"].batches] == ["b1"]
    assert [d.status for d in store.deliveries.values()] == [PENDING]


def test_a_delivery_that_loses_a_race_runs_again_at_once_within_its_attempt():
    races = []

    def loses_once(event):
        if not races:
            races.append(event)
            raise TransactionConflict("deadlock detected")

    bus, store, _, _ = bootstrap_test_bus(event_handlers={events.OutOfStock: [loses_once]})
    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))

    bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert [(d.status, d.attempts) for d in store.deliveries.values()] == [(DONE, 1)]


def test_a_delivery_that_keeps_losing_races_waits_for_a_retry():
    def always_loses(event):
        raise TransactionConflict("deadlock detected")

    bus, store, _, _ = bootstrap_test_bus(event_handlers={events.OutOfStock: [always_loses]})
    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))

    bus.handle(commands.Allocate("o1", "LAMP", 10))

    [delivery] = store.deliveries.values()
    assert (delivery.status, delivery.attempts) == (PENDING, 1)
    assert "deadlock detected" in delivery.last_error


def test_a_race_lost_inside_a_shared_batch_gives_the_batch_up_and_runs_each_alone():
    runs = []

    def add_spare_batch(event, uow):  # a database effect, in the batch's transaction
        runs.append("spare")
        with uow:
            uow.products.get(event.sku).add_batch(f"spare-{runs.count('spare')}", 1, None)
            uow.commit()

    def loses_once(event):
        runs.append("race")
        if runs.count("race") == 1:
            raise TransactionConflict("deadlock detected")

    bus, store, _, _ = bootstrap_test_bus(
        event_handlers={events.OutOfStock: [add_spare_batch, loses_once]}
    )
    bus.transaction_groups = [frozenset({handler_name(add_spare_batch), handler_name(loses_once)})]
    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))

    bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert runs == ["spare", "race", "spare", "race"]  # the batch, then each alone
    # The batch's first effect was undone with it (its locks went at once), so it is there once.
    assert [b.reference for b in store.products["LAMP"].batches] == ["b1", "spare-2"]
    assert [(d.status, d.attempts) for d in store.deliveries.values()] == [(DONE, 1), (DONE, 1)]


def test_a_batch_runs_its_deliveries_in_sku_order():
    lost, seen = [], []

    def note(event):
        seen.append(event.sku)

    bus, _, _, _ = bootstrap_test_bus(
        event_handlers={events.OutOfStock: [note]}, dispatch=lost.extend
    )
    bus.transaction_groups = [frozenset({handler_name(note)})]
    for sku in ("ZEBRA", "APPLE", "MANGO"):
        bus.handle(commands.CreateBatch(f"{sku}-1", sku, 1, None))
        bus.handle(commands.Allocate("o1", sku, 10))

    bus.deliver_all(list(lost))  # one message with all three, as the sweeper sends them

    assert seen == ["APPLE", "MANGO", "ZEBRA"]


def test_the_bus_says_which_deliveries_it_made_done_after_each_commit():
    told = []

    def fail(event):
        raise RuntimeError("mail server down")

    def note(event):
        pass

    bus, _, _, _ = bootstrap_test_bus(
        event_handlers={events.OutOfStock: [note, fail]}, on_delivered=told.append
    )
    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))

    bus.handle(commands.Allocate("o1", "LAMP", 10), correlation_id="req-1")

    assert [[(d.handler, d.correlation_id) for d in batch] for batch in told] == [
        [(handler_name(note), "req-1")]
    ]


def test_a_delivery_runs_its_handler_once_however_often_it_is_delivered():
    bus, store, _, publisher = bootstrap_test_bus()
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))
    bus.handle(commands.Allocate("o1", "LAMP", 10))

    bus.deliver_all(list(store.deliveries))

    assert len(publisher.published) == 1


def test_events_leave_only_after_the_command_commits():
    def allocate_then_fail(cmd, uow):
        with uow:
            product = uow.products.get(cmd.sku, orderid=cmd.orderid)
            product.allocate(OrderLine(cmd.orderid, cmd.sku, cmd.qty))
            raise RuntimeError("before the commit")

    bus, store, _, publisher = bootstrap_test_bus(
        command_handlers=with_command_handler(commands.Allocate, allocate_then_fail)
    )
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))

    with pytest.raises(RuntimeError):
        bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert publisher.published == []
    assert [type(e) for e in store.logged_events()] == [events.BatchCreated]


def test_a_transport_that_is_down_only_delays_delivery():
    def broker_down(delivery_ids):
        raise ConnectionError("broker down")

    bus, store, _, publisher = bootstrap_test_bus(dispatch=broker_down)
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))

    assert bus.handle(commands.Allocate("o1", "LAMP", 10)) == "b1"
    assert publisher.published == []
    pending = [d.id for d in store.deliveries.values() if d.status == PENDING]
    assert len(pending) == 3  # BatchCreated -> stream; Allocated -> publish, stream

    bus.deliver_all(pending)  # what the sweeper does

    assert [channel for channel, _ in publisher.published] == ["line_allocated"]
    assert [type_name for _, type_name, _ in publisher.streamed] == ["BatchCreated", "Allocated"]


def test_commands_returned_by_an_event_handler_are_handled_in_the_same_chain():
    bus, store, _, publisher = bootstrap_test_bus()
    bus.handle(commands.CreateBatch("in-stock", "LAMP", 10, None))
    bus.handle(commands.CreateBatch("shipment", "LAMP", 10, TOMORROW))
    bus.handle(commands.Allocate("o1", "LAMP", 10))

    bus.handle(commands.ChangeBatchQuantity("in-stock", 5), correlation_id="req-7")

    assert store.allocations("LAMP") == {"o1": "shipment"}
    channel, message = publisher.published[-1]
    assert (channel, message["orderid"], message["batchref"]) == (
        "line_allocated",
        "o1",
        "shipment",
    )
    chain = {row.type: (event_id, row) for event_id, row in store.events.items()}
    deallocated_id, deallocated = chain["Deallocated"]
    _, reallocated = chain["Allocated"]  # the last Allocated: the reallocation
    assert deallocated.correlation_id == reallocated.correlation_id == "req-7"
    assert reallocated.causation_id == deallocated_id


def test_without_the_reallocate_handler_a_deallocated_line_stays_unallocated():
    routing = {**UNIT_EVENT_HANDLERS, events.Deallocated: []}
    assert handlers.reallocate in UNIT_EVENT_HANDLERS[events.Deallocated]
    bus, store, _, _ = bootstrap_test_bus(event_handlers=routing)
    bus.handle(commands.CreateBatch("in-stock", "LAMP", 10, None))
    bus.handle(commands.CreateBatch("shipment", "LAMP", 10, TOMORROW))
    bus.handle(commands.Allocate("o1", "LAMP", 10))

    bus.handle(commands.ChangeBatchQuantity("in-stock", 5))

    assert store.allocations("LAMP") == {}


# --- sharing one bus ------------------------------------------------------------------------


def test_one_bus_serves_two_threads_at_once_each_with_its_own_result():
    barrier = threading.Barrier(2, timeout=5)

    def allocate_in_step(cmd, uow):
        barrier.wait()  # both commands are inside bus.handle before either goes on
        return handlers.allocate(cmd, uow)

    bus, store, _, publisher = bootstrap_test_bus(
        command_handlers=with_command_handler(commands.Allocate, allocate_in_step)
    )
    bus.handle(commands.CreateBatch("lamps", "LAMP", 10, None))
    bus.handle(commands.CreateBatch("chairs", "CHAIR", 10, None))
    results = {}

    def allocate(orderid, sku):
        results[orderid] = bus.handle(commands.Allocate(orderid, sku, 1), correlation_id=orderid)

    threads = [
        threading.Thread(target=allocate, args=("o-lamp", "LAMP")),
        threading.Thread(target=allocate, args=("o-chair", "CHAIR")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=5)

    assert results == {"o-lamp": "lamps", "o-chair": "chairs"}
    allocated = {row.correlation_id: row.event() for row in store.events.values()}
    assert allocated["o-lamp"] == events.Allocated("o-lamp", "LAMP", 1, "lamps", version=2)
    assert allocated["o-chair"] == events.Allocated("o-chair", "CHAIR", 1, "chairs", version=2)
    assert sorted(message["orderid"] for _, message in publisher.published) == [
        "o-chair",
        "o-lamp",
    ]


def test_bootstrap_refuses_a_second_handler_for_one_command():
    def another_allocate(cmd, uow):
        return "elsewhere"

    with pytest.raises(ValueError, match=r"Allocate already goes to .*allocate; a command has one"):
        bootstrap_test_bus(
            command_handlers=[
                (commands.Allocate, handlers.allocate),
                (commands.Allocate, another_allocate),
            ]
        )
