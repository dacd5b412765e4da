"""The command bus: routing, dependency injection and retries, on fakes (deliveries:
tests/unit/test_delivery_runner.py)."""

import threading
from types import SimpleNamespace

import pytest

from allocation import handlers, messagebus
from allocation.bootstrap import COMMAND_HANDLERS
from allocation.domain import commands, events
from allocation.domain.model import OrderLine
from allocation.unit_of_work import TransactionConflict
from tests.unit.fakes import UNIT_EVENT_HANDLERS, bootstrap_test_bus

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

    def inspect_dependencies(event, publish, notifications, event_id):
        received.append((publish, notifications, event_id))

    bus, store, notifications, publisher = bootstrap_test_bus(
        event_handlers={events.BatchCreated: [inspect_dependencies]}
    )

    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None), correlation_id="req-1")

    [event_id] = store.events
    assert received == [(publisher, notifications, event_id)]


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


# --- the chain -----------------------------------------------------------------------------


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
    barrier = threading.Barrier(2, timeout=60)

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
        thread.join(timeout=60)

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
