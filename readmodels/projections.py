"""Projection handlers: apply domain events to the read tables, in any delivery order.

They run inside the delivery's transaction, so a projection and its delivery's done-mark
commit together. Each row remembers the product version of the last event applied to it, and
an older event changes nothing, so a redelivered or late event is harmless.
"""

from datetime import date

from django.db import connection

from allocation.domain import events
from readmodels.models import BatchStock, OrderAllocation


def add_allocation_to_read_model(event: events.Allocated) -> None:
    _apply_line(event.orderid, event.sku, event.qty, event.batchref, event.version)


def remove_allocation_from_read_model(
    event: events.Deallocated | events.AllocationCancelled,
) -> None:
    _apply_line(event.orderid, event.sku, event.qty, None, event.version)


def add_batch_to_read_model(event: events.BatchCreated) -> None:
    _ensure_batch(event.ref, event.sku)
    # The eta never changes after creation, whatever else arrived first.
    BatchStock.objects.filter(reference=event.ref).update(
        eta=date.fromisoformat(event.eta) if event.eta else None
    )
    _apply_purchased(event.ref, event.qty, event.version)


def change_batch_quantity_in_read_model(event: events.BatchQuantityChanged) -> None:
    _ensure_batch(event.ref, event.sku)
    _apply_purchased(event.ref, event.qty, event.version)


def _apply_line(orderid: str, sku: str, qty: int, batchref: str | None, version: int) -> None:
    """Move the line to its state at `version`, unless the view already holds a newer one.

    A line with no batch is not allocated: the row stays as a tombstone, so a late event
    older than the removal cannot bring the line back.
    """
    if _insert_line(orderid, sku, qty, batchref, version):
        # The view had no row for the line (the usual case): nothing to move off a batch.
        if batchref:
            _add_to_batch(batchref, sku, qty)
        return
    row = OrderAllocation.objects.select_for_update().get(orderid=orderid, sku=sku)
    if row.version >= version:
        return
    if row.batchref:
        _add_to_batch(row.batchref, sku, -row.qty)
    if batchref:
        _add_to_batch(batchref, sku, qty)
    OrderAllocation.objects.filter(pk=row.pk).update(qty=qty, batchref=batchref, version=version)


# Two upserts in SQL: the ORM has no INSERT ... ON CONFLICT that adds to a column or tells
# whether it inserted, and these run for every allocation (2 statements instead of 5).


def _insert_line(orderid: str, sku: str, qty: int, batchref: str | None, version: int) -> bool:
    """Insert the line's row if the view has none; True if it did."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {OrderAllocation._meta.db_table} (orderid, sku, qty, batchref, version)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (orderid, sku) DO NOTHING RETURNING 1",
            [orderid, sku, qty, batchref, version],
        )
        return cursor.fetchone() is not None


def _add_to_batch(ref: str, sku: str, qty: int) -> None:
    """Add `qty` (negative: take it off) to the batch's allocated count; make its row if the
    batch's own events have not arrived yet."""
    table = BatchStock._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (reference, sku, eta, purchased, allocated, version)"
            " VALUES (%s, %s, NULL, 0, %s, 0) ON CONFLICT (reference)"
            f" DO UPDATE SET allocated = {table}.allocated + excluded.allocated",
            [ref, sku, qty],
        )


def _ensure_batch(ref: str, sku: str) -> None:
    """The batch's row, empty until its own events arrive (a line may get there first)."""
    BatchStock.objects.bulk_create([BatchStock(reference=ref, sku=sku)], ignore_conflicts=True)


def _apply_purchased(ref: str, qty: int, version: int) -> None:
    BatchStock.objects.filter(reference=ref, version__lt=version).update(
        purchased=qty, version=version
    )


# What the book-compatible write endpoints wait for before they answer (read-your-writes).
READ_MODEL_HANDLERS = (
    add_allocation_to_read_model,
    remove_allocation_from_read_model,
    add_batch_to_read_model,
    change_batch_quantity_in_read_model,
)
