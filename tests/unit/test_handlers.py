"""The service layer through the bus, on fakes: commands in; stored state and effects out."""

import pytest

from allocation.domain import commands, events
from allocation.domain.model import (
    AllocationConflict,
    DuplicateBatch,
    InvalidEta,
    InvalidQuantity,
    InvalidSku,
    NotAllocated,
    UnknownBatch,
)
from tests.unit.fakes import DEAD, DONE, bootstrap_test_bus, bootstrap_test_runner

TOMORROW = "2026-01-02"
BAD_QUANTITIES = [0, -1, True, 1.5, "3", None]


@pytest.fixture
def app():
    return bootstrap_test_bus()


def allocated_messages(publisher):
    """What went out on `line_allocated`, cut to the fields of the book's contract."""
    contract = ("orderid", "sku", "qty", "batchref")
    return [
        {field: message[field] for field in contract}
        for channel, message in publisher.published
        if channel == "line_allocated"
    ]


def event_ids(store, type_name):
    return [event_id for event_id, row in store.events.items() if row.type == type_name]


# --- CreateBatch ----------------------------------------------------------------------------


def test_create_batch_for_a_new_product(app):
    bus, store, _, _ = app

    ref = bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))

    assert ref == "b1"
    product = store.products["LAMP"]
    assert [(b.reference, b.purchased_quantity, b.eta) for b in product.batches] == [
        ("b1", 100, None)
    ]
    assert product.version_number == 1
    assert store.logged_events() == [
        events.BatchCreated(ref="b1", sku="LAMP", qty=100, eta=None, version=1)
    ]


def test_create_batch_for_an_existing_product(app):
    bus, store, _, _ = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))

    bus.handle(commands.CreateBatch("b2", "LAMP", 50, TOMORROW))

    product = store.products["LAMP"]
    assert [b.reference for b in product.batches] == ["b1", "b2"]
    assert product.version_number == 2
    assert store.logged_events()[-1] == events.BatchCreated(
        ref="b2", sku="LAMP", qty=50, eta="2026-01-02", version=2
    )


@pytest.mark.parametrize("eta", ["2024-13-40", "tomorrow", "", 20240101])
def test_create_batch_rejects_an_eta_that_is_not_an_iso_date(app, eta):
    bus, store, _, _ = app

    with pytest.raises(InvalidEta):
        bus.handle(commands.CreateBatch("b1", "LAMP", 10, eta))

    assert store.products == {}


def test_a_duplicate_batch_reference_is_rejected_even_for_another_sku(app):
    bus, store, _, _ = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))

    with pytest.raises(DuplicateBatch):
        bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))
    with pytest.raises(DuplicateBatch):
        bus.handle(commands.CreateBatch("b1", "CHAIR", 5, None))

    assert set(store.products) == {"LAMP"}
    assert store.batch("b1").purchased_quantity == 100


# --- Allocate -------------------------------------------------------------------------------


def test_allocate_returns_the_batch_and_stores_the_allocation(app):
    bus, store, _, _ = app
    bus.handle(commands.CreateBatch("shipment", "LAMP", 100, TOMORROW))
    bus.handle(commands.CreateBatch("in-stock", "LAMP", 100, None))

    ref = bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert ref == "in-stock"
    assert store.allocations("LAMP") == {"o1": "in-stock"}
    assert store.batch("in-stock").available_quantity == 90
    assert store.logged_events()[-1] == events.Allocated(
        orderid="o1", sku="LAMP", qty=10, batchref="in-stock", version=3
    )


def test_allocate_for_an_unknown_sku_is_an_invalid_sku(app):
    bus, _, _, _ = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))

    with pytest.raises(InvalidSku) as raised:
        bus.handle(commands.Allocate("o1", "NOPE", 10))

    assert str(raised.value) == "Invalid sku NOPE"


def test_allocating_the_same_line_twice_is_a_no_op(app):
    bus, store, _, publisher = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))
    bus.handle(commands.CreateBatch("b2", "LAMP", 100, TOMORROW))
    first = bus.handle(commands.Allocate("o1", "LAMP", 10))
    logged = len(store.events)
    version = store.products["LAMP"].version_number

    again = bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert again == first == "b1"
    assert len(store.events) == logged
    assert store.products["LAMP"].version_number == version
    assert store.batch("b1").available_quantity == 90
    assert len(allocated_messages(publisher)) == 1


def test_the_same_line_with_another_quantity_is_an_allocation_conflict(app):
    bus, store, _, _ = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))
    bus.handle(commands.Allocate("o1", "LAMP", 10))

    with pytest.raises(AllocationConflict):
        bus.handle(commands.Allocate("o1", "LAMP", 20))

    assert store.batch("b1").available_quantity == 90


def test_allocations_of_other_orders_are_kept_when_one_is_saved(app):
    # The repository loads only the named line; saving must not drop the others.
    bus, store, _, _ = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))
    for orderid in ("o1", "o2", "o3"):
        bus.handle(commands.Allocate(orderid, "LAMP", 10))

    assert store.allocations("LAMP") == {"o1": "b1", "o2": "b1", "o3": "b1"}
    assert store.batch("b1").available_quantity == 70


def test_out_of_stock_sends_an_email_and_allocates_nothing(app):
    bus, store, notifications, publisher = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))

    ref = bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert ref is None
    assert store.allocations("LAMP") == {}
    assert len(notifications.sent) == 1
    subject, body = notifications.sent[0]
    assert "LAMP" in subject
    assert "LAMP" in body
    assert allocated_messages(publisher) == []
    assert store.logged_events()[-1] == events.OutOfStock(sku="LAMP", version=1)


def test_an_allocation_is_published_on_line_allocated(app):
    bus, _, notifications, publisher = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))

    bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert [channel for channel, _ in publisher.published] == ["line_allocated"]
    assert allocated_messages(publisher) == [
        {"orderid": "o1", "sku": "LAMP", "qty": 10, "batchref": "b1"}
    ]
    assert notifications.sent == []


def test_external_effects_carry_the_event_id_as_their_dedup_key(app):
    bus, store, notifications, publisher = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))

    bus.handle(commands.Allocate("o1", "LAMP", 10))
    bus.handle(commands.Allocate("o2", "LAMP", 10))

    [(_, message)] = publisher.published
    assert message["event_id"] == event_ids(store, "Allocated")[0]
    assert notifications.dedup_keys == event_ids(store, "OutOfStock")


# --- ChangeBatchQuantity --------------------------------------------------------------------


def test_a_lowered_quantity_moves_the_latest_lines_to_another_batch(app):
    bus, store, _, publisher = app
    bus.handle(commands.CreateBatch("in-stock", "LAMP", 30, None))
    bus.handle(commands.CreateBatch("shipment", "LAMP", 50, TOMORROW))
    for orderid in ("o1", "o2", "o3"):
        assert bus.handle(commands.Allocate(orderid, "LAMP", 10)) == "in-stock"

    bus.handle(commands.ChangeBatchQuantity("in-stock", 15))

    assert store.allocations("LAMP") == {"o1": "in-stock", "o2": "shipment", "o3": "shipment"}
    assert store.batch("in-stock").available_quantity == 5
    assert store.batch("shipment").available_quantity == 30
    # o3 was allocated last, so it is deallocated (and reallocated) first.
    assert allocated_messages(publisher)[-2:] == [
        {"orderid": "o3", "sku": "LAMP", "qty": 10, "batchref": "shipment"},
        {"orderid": "o2", "sku": "LAMP", "qty": 10, "batchref": "shipment"},
    ]


def test_a_lowered_quantity_with_nowhere_else_to_go_ends_out_of_stock(app):
    bus, store, notifications, _ = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 20, None))
    bus.handle(commands.Allocate("o1", "LAMP", 10))
    bus.handle(commands.Allocate("o2", "LAMP", 10))

    bus.handle(commands.ChangeBatchQuantity("b1", 10))

    assert store.allocations("LAMP") == {"o1": "b1"}
    assert store.batch("b1").available_quantity == 0
    assert len(notifications.sent) == 1
    assert isinstance(store.logged_events()[-1], events.OutOfStock)


def test_a_raised_quantity_deallocates_nothing(app):
    bus, store, _, publisher = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 20, None))
    bus.handle(commands.Allocate("o1", "LAMP", 10))

    bus.handle(commands.ChangeBatchQuantity("b1", 40))

    assert store.allocations("LAMP") == {"o1": "b1"}
    assert store.batch("b1").available_quantity == 30
    assert len(allocated_messages(publisher)) == 1


def test_changing_the_quantity_of_an_unknown_batch_is_rejected(app):
    bus, _, _, _ = app

    with pytest.raises(UnknownBatch):
        bus.handle(commands.ChangeBatchQuantity("nope", 10))


# --- CancelAllocation -----------------------------------------------------------------------


def test_cancelling_frees_the_stock_and_does_not_reallocate(app):
    bus, store, _, publisher = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 20, None))
    bus.handle(commands.CreateBatch("b2", "LAMP", 20, TOMORROW))
    bus.handle(commands.Allocate("o1", "LAMP", 10))

    ref = bus.handle(commands.CancelAllocation("o1", "LAMP"))

    assert ref == "b1"
    assert store.allocations("LAMP") == {}
    assert store.batch("b1").available_quantity == 20
    assert store.batch("b2").available_quantity == 20
    assert store.logged_events()[-1] == events.AllocationCancelled(
        orderid="o1", sku="LAMP", qty=10, batchref="b1", version=4
    )
    assert len(allocated_messages(publisher)) == 1
    assert all(d.status == DONE for d in store.deliveries.values())


def test_cancelling_a_line_that_is_not_allocated_is_rejected(app):
    bus, store, _, _ = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 20, None))

    with pytest.raises(NotAllocated):
        bus.handle(commands.CancelAllocation("o1", "LAMP"))

    assert store.products["LAMP"].version_number == 1


def test_cancelling_for_an_unknown_sku_is_an_invalid_sku(app):
    bus, _, _, _ = app

    with pytest.raises(InvalidSku) as raised:
        bus.handle(commands.CancelAllocation("o1", "NOPE"))

    assert str(raised.value) == "Invalid sku NOPE"


# --- quantities -----------------------------------------------------------------------------


@pytest.mark.parametrize("qty", BAD_QUANTITIES)
def test_create_batch_rejects_a_quantity_that_is_not_a_positive_int(app, qty):
    bus, store, _, _ = app

    with pytest.raises(InvalidQuantity):
        bus.handle(commands.CreateBatch("b1", "LAMP", qty, None))

    assert store.products == {}
    assert store.events == {}


@pytest.mark.parametrize("qty", BAD_QUANTITIES)
def test_allocate_rejects_a_quantity_that_is_not_a_positive_int(app, qty):
    bus, store, _, _ = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 20, None))

    with pytest.raises(InvalidQuantity):
        bus.handle(commands.Allocate("o1", "LAMP", qty))

    assert store.allocations("LAMP") == {}
    assert len(store.events) == 1


@pytest.mark.parametrize(
    "qty",
    [
        0,
        -1,
        True,
        1.5,
        "3",
        None,
    ],
)
def test_change_batch_quantity_rejects_a_quantity_that_is_not_a_positive_int(app, qty):
    bus, store, _, _ = app
    bus.handle(commands.CreateBatch("b1", "LAMP", 20, None))

    with pytest.raises(InvalidQuantity):
        bus.handle(commands.ChangeBatchQuantity("b1", qty))

    assert store.batch("b1").purchased_quantity == 20
    assert len(store.events) == 1


# --- a reallocation that its client overtakes ---------------------------------------------------


def reallocations(store):
    return [d for d in store.deliveries.values() if d.handler.endswith(".reallocate")]


@pytest.fixture
def line_taken_off():
    """o1 (10) was taken off b1 by a quantity change; its reallocation has not run yet (no
    step ran after the change): the next commit's step runs it."""
    wiring, store, _, _ = app = bootstrap_test_runner()
    bus = wiring.bus
    bus.handle(commands.CreateBatch("b1", "LAMP", 20, None))
    bus.handle(commands.CreateBatch("b2", "LAMP", 20, TOMORROW))
    bus.handle(commands.Allocate("o1", "LAMP", 10))
    wake, bus.wake = bus.wake, [].extend  # no worker looks after this commit
    bus.handle(commands.ChangeBatchQuantity("b1", 5))
    bus.wake = wake
    [held] = reallocations(store)
    return app, held


def test_a_reallocation_leaves_a_line_its_client_allocated_again(line_taken_off):
    (wiring, store, _, _), held = line_taken_off
    # Another quantity, before the reallocation (which runs in the step after this commit).
    wiring.bus.handle(commands.Allocate("o1", "LAMP", 4))

    assert store.allocations("LAMP") == {"o1": "b1"}
    assert store.products["LAMP"].allocations["o1"].line.qty == 4
    assert store.deliveries[held.id].status == DONE


def test_a_reallocation_leaves_a_line_its_client_cancelled(line_taken_off):
    (wiring, store, _, _), held = line_taken_off
    wiring.bus.wake = [].extend  # the step below runs after both of the client's commands
    wiring.bus.handle(commands.Allocate("o1", "LAMP", 4))
    wiring.bus.handle(commands.CancelAllocation("o1", "LAMP"))

    wiring.runner.run_due()

    assert store.allocations("LAMP") == {}
    assert store.deliveries[held.id].status == DONE


def test_a_reallocation_that_nothing_overtook_allocates_the_line(line_taken_off):
    (wiring, store, _, _), held = line_taken_off

    wiring.runner.run_due()
    wiring.runner.run_due(also=[held.id])  # a second copy changes nothing

    assert store.allocations("LAMP") == {"o1": "b2"}
    assert store.batch("b2").allocated_quantity == 10
    assert store.deliveries[held.id].status == DONE


def reallocate_to_an_unknown_sku(event: events.Deallocated) -> list[commands.Command]:
    return [commands.Allocate(event.orderid, "NO-SUCH-SKU", event.qty)]


def test_a_follow_up_command_the_domain_refuses_is_not_retried():
    bus, store, _, _ = bootstrap_test_bus(
        event_handlers={events.Deallocated: [reallocate_to_an_unknown_sku]}
    )
    bus.handle(commands.CreateBatch("b1", "LAMP", 20, None))
    bus.handle(commands.Allocate("o1", "LAMP", 10))
    bus.handle(commands.ChangeBatchQuantity("b1", 5))

    [refused] = store.deliveries.values()
    assert (refused.status, refused.attempts) == (DEAD, 1)  # parked at once, not retried
    assert "Invalid sku NO-SUCH-SKU" in refused.last_error
