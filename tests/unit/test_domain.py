"""The Product aggregate and its batches, in plain Python."""

from datetime import date

import pytest

from allocation.domain import events
from allocation.domain.model import (
    Allocation,
    AllocationConflict,
    Batch,
    DuplicateBatch,
    InvalidQuantity,
    NotAllocated,
    OrderLine,
    Product,
    UnknownBatch,
)

TODAY = date(2026, 1, 1)
TOMORROW = date(2026, 1, 2)
LATER = date(2026, 1, 10)

BAD_QUANTITIES = [0, -1, True, 1.5, "3", None]


def product_with(*batches: tuple[str, int, date | None], sku: str = "LAMP") -> Product:
    """A product whose batches were created through the aggregate, its events cleared."""
    product = Product(sku)
    for ref, qty, eta in batches:
        product.add_batch(ref, qty, eta)
    product.events.clear()
    return product


# --- batches --------------------------------------------------------------------------------


def test_allocating_to_a_batch_reduces_its_available_quantity():
    product = product_with(("b1", 20, None))

    product.allocate(OrderLine("o1", "LAMP", 2))

    assert product.batch("b1").available_quantity == 18


def test_a_batch_can_allocate_a_line_equal_to_what_is_available():
    assert Batch("b1", "LAMP", 2).can_allocate(OrderLine("o1", "LAMP", 2))


def test_a_batch_cannot_allocate_more_than_is_available():
    assert not Batch("b1", "LAMP", 2).can_allocate(OrderLine("o1", "LAMP", 3))


def test_a_batch_cannot_allocate_a_line_of_another_sku():
    assert not Batch("b1", "LAMP", 20).can_allocate(OrderLine("o1", "CHAIR", 1))


def test_an_allocation_that_takes_the_last_units_succeeds():
    product = product_with(("b1", 5, None))

    assert product.allocate(OrderLine("o1", "LAMP", 5)) == "b1"
    assert product.batch("b1").available_quantity == 0


# --- allocation -----------------------------------------------------------------------------


def test_allocate_returns_the_reference_of_the_chosen_batch():
    product = product_with(("shipment", 100, TOMORROW))

    assert product.allocate(OrderLine("o1", "LAMP", 10)) == "shipment"


def test_warehouse_stock_is_preferred_to_shipments():
    product = product_with(("shipment", 100, TOMORROW), ("in-stock", 100, None))

    ref = product.allocate(OrderLine("o1", "LAMP", 10))

    assert ref == "in-stock"
    assert product.batch("in-stock").available_quantity == 90
    assert product.batch("shipment").available_quantity == 100


def test_earlier_shipments_are_preferred():
    # References in the opposite order, so that only the eta can pick the winner.
    product = product_with(
        ("a-slow", 100, LATER), ("b-medium", 100, TOMORROW), ("c-fast", 100, TODAY)
    )

    assert product.allocate(OrderLine("o1", "LAMP", 10)) == "c-fast"


@pytest.mark.parametrize("eta", [None, TOMORROW])
def test_batches_that_tie_on_eta_are_chosen_by_reference(eta):
    product = product_with(("b-2", 100, eta), ("b-3", 100, eta), ("b-1", 100, eta))

    assert product.allocate(OrderLine("o1", "LAMP", 10)) == "b-1"


def test_a_less_preferred_batch_is_used_when_the_preferred_one_is_too_small():
    product = product_with(("in-stock", 5, None), ("shipment", 100, TOMORROW))

    assert product.allocate(OrderLine("o1", "LAMP", 10)) == "shipment"


def test_allocation_records_an_allocated_event_with_the_new_version():
    product = product_with(("b1", 100, None))
    assert product.version_number == 1

    product.allocate(OrderLine("o1", "LAMP", 10))

    assert product.events == [
        events.Allocated(orderid="o1", sku="LAMP", qty=10, batchref="b1", version=2)
    ]
    assert product.version_number == 2


def test_allocating_the_same_line_twice_changes_nothing_and_reports_the_same_batch():
    product = product_with(("b1", 100, None), ("b2", 100, TOMORROW))
    line = OrderLine("o1", "LAMP", 10)
    first = product.allocate(line)
    product.events.clear()
    version = product.version_number

    again = product.allocate(line)

    assert again == first == "b1"
    assert product.events == []
    assert product.version_number == version
    assert product.batch("b1").available_quantity == 90


def test_the_same_order_line_with_another_quantity_is_rejected():
    product = product_with(("b1", 100, None))
    product.allocate(OrderLine("o1", "LAMP", 10))
    product.events.clear()
    version = product.version_number

    with pytest.raises(AllocationConflict):
        product.allocate(OrderLine("o1", "LAMP", 11))

    assert product.batch("b1").available_quantity == 90
    assert product.events == []
    assert product.version_number == version


def test_out_of_stock_allocates_nothing_and_records_out_of_stock():
    product = product_with(("b1", 10, None), ("b2", 5, TOMORROW))

    ref = product.allocate(OrderLine("o1", "LAMP", 11))

    assert ref is None
    assert product.events == [events.OutOfStock(sku="LAMP", version=2)]
    assert product.allocations == {}
    assert [b.available_quantity for b in product.batches] == [10, 5]
    assert product.version_number == 2


def test_the_version_increments_on_every_change():
    product = Product("LAMP")
    versions = [product.version_number]

    product.add_batch("b1", 10, None)
    versions.append(product.version_number)
    product.allocate(OrderLine("o1", "LAMP", 5))
    versions.append(product.version_number)
    product.change_batch_quantity("b1", 8)
    versions.append(product.version_number)
    product.cancel("o1")
    versions.append(product.version_number)

    assert versions == [0, 1, 2, 3, 4]
    assert [e.version for e in product.events] == [1, 2, 3, 4]


# --- batches: creation and quantity changes -------------------------------------------------


def test_add_batch_records_batch_created_with_an_iso_eta():
    product = Product("LAMP")

    product.add_batch("b1", 10, TOMORROW)

    assert product.events == [
        events.BatchCreated(ref="b1", sku="LAMP", qty=10, eta="2026-01-02", version=1)
    ]


def test_a_duplicate_batch_reference_is_rejected():
    product = product_with(("b1", 10, None))

    with pytest.raises(DuplicateBatch):
        product.add_batch("b1", 5, None)

    assert len(product.batches) == 1
    assert product.version_number == 1


def test_lowering_a_quantity_that_still_fits_deallocates_nothing():
    product = product_with(("b1", 20, None))
    product.allocate(OrderLine("o1", "LAMP", 10))
    product.events.clear()

    product.change_batch_quantity("b1", 10)

    assert product.events == [events.BatchQuantityChanged(ref="b1", sku="LAMP", qty=10, version=3)]
    assert set(product.allocations) == {"o1"}
    assert product.batch("b1").available_quantity == 0


def test_lowering_a_quantity_deallocates_the_latest_lines_first_until_it_fits():
    product = product_with(("b1", 30, None))
    for orderid in ("o1", "o2", "o3"):
        product.allocate(OrderLine(orderid, "LAMP", 10))
    product.events.clear()

    product.change_batch_quantity("b1", 15)

    assert product.events == [
        events.BatchQuantityChanged(ref="b1", sku="LAMP", qty=15, version=5),
        events.Deallocated(orderid="o3", sku="LAMP", qty=10, batchref="b1", version=5),
        events.Deallocated(orderid="o2", sku="LAMP", qty=10, batchref="b1", version=5),
    ]
    assert set(product.allocations) == {"o1"}
    assert product.batch("b1").available_quantity == 5


def test_lines_placed_by_the_same_version_are_deallocated_in_order_id_order():
    # Not produced by allocate() today, but loaded data may hold it: the choice stays fixed.
    lines = [Allocation(OrderLine(o, "LAMP", 10), "b1", version=4) for o in ("a", "c", "b")]
    product = Product("LAMP", [Batch("b1", "LAMP", 30, None, 30)], 4, lines)

    product.change_batch_quantity("b1", 10)

    assert [e.orderid for e in product.events if isinstance(e, events.Deallocated)] == ["c", "b"]


def test_changing_the_quantity_of_an_unknown_batch_is_rejected():
    product = product_with(("b1", 20, None))

    with pytest.raises(UnknownBatch):
        product.change_batch_quantity("nope", 10)


# --- cancellation ---------------------------------------------------------------------------


def test_cancelling_frees_the_stock_and_does_not_reallocate():
    product = product_with(("b1", 20, None), ("b2", 20, TOMORROW))
    product.allocate(OrderLine("o1", "LAMP", 10))
    product.events.clear()

    allocation = product.cancel("o1")

    assert allocation.batchref == "b1"
    assert product.events == [
        events.AllocationCancelled(orderid="o1", sku="LAMP", qty=10, batchref="b1", version=4)
    ]
    assert product.allocations == {}
    assert [b.available_quantity for b in product.batches] == [20, 20]


def test_cancelling_a_line_that_is_not_allocated_is_rejected():
    product = product_with(("b1", 20, None))

    with pytest.raises(NotAllocated):
        product.cancel("o1")

    assert product.version_number == 1


# --- quantities -----------------------------------------------------------------------------


@pytest.mark.parametrize("qty", BAD_QUANTITIES)
def test_a_batch_needs_a_positive_integer_quantity(qty):
    product = Product("LAMP")

    with pytest.raises(InvalidQuantity):
        product.add_batch("b1", qty, None)

    assert product.batches == []


@pytest.mark.parametrize("qty", BAD_QUANTITIES)
def test_an_order_line_needs_a_positive_integer_quantity(qty):
    product = product_with(("b1", 20, None))

    with pytest.raises(InvalidQuantity):
        product.allocate(OrderLine("o1", "LAMP", qty))

    assert product.allocations == {}


@pytest.mark.parametrize("qty", BAD_QUANTITIES)
def test_a_changed_batch_quantity_must_be_a_positive_integer(qty):
    product = product_with(("b1", 20, None))

    with pytest.raises(InvalidQuantity):
        product.change_batch_quantity("b1", qty)

    assert product.batch("b1").purchased_quantity == 20


def test_a_guarded_allocation_leaves_a_line_that_changed_since():
    product = Product("LAMP", [Batch("b1", "LAMP", 20)])
    product.allocate(OrderLine("o1", "LAMP", 10))
    product.change_batch_quantity("b1", 5)  # o1 taken off at version 2
    taken_off_at = product.version_number
    product.allocate(OrderLine("o1", "LAMP", 3))  # its client allocates it again
    product.events.clear()

    assert product.allocate(OrderLine("o1", "LAMP", 10), unless_changed_since=taken_off_at) == "b1"
    assert product.allocations["o1"].line.qty == 3
    assert product.events == []


def test_a_guarded_allocation_of_an_untouched_line_allocates_it():
    product = Product("LAMP", [Batch("b1", "LAMP", 20), Batch("b2", "LAMP", 20)])
    product.allocate(OrderLine("o1", "LAMP", 10))
    product.change_batch_quantity("b1", 5)

    ref = product.allocate(OrderLine("o1", "LAMP", 10), unless_changed_since=2)

    assert ref == "b2"
    assert product.released == {}
