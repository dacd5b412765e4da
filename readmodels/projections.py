"""Projection handlers: apply domain events to the read tables, in any delivery order.

They run inside the delivery's transaction, so a projection and its delivery's done-mark
commit together.
"""

from allocation.domain import events
from readmodels.models import OrderAllocation


def add_allocation_to_read_model(event: events.Allocated) -> None:
    _apply_line(event.orderid, event.sku, event.qty, event.batchref, event.version)


def remove_allocation_from_read_model(
    event: events.Deallocated | events.AllocationCancelled,
) -> None:
    _apply_line(event.orderid, event.sku, event.qty, None, event.version)


def _apply_line(orderid: str, sku: str, qty: int, batchref: str | None, version: int) -> None:
    """Upsert the line unless the view already holds a newer version of it.

    Insert-if-absent, then update-if-older: two statements, no savepoint, and correct when
    two deliveries for the same line race (the update re-checks the version under its lock).
    """
    state = {"qty": qty, "batchref": batchref, "version": version}
    OrderAllocation.objects.bulk_create(
        [OrderAllocation(orderid=orderid, sku=sku, **state)], ignore_conflicts=True
    )
    OrderAllocation.objects.filter(orderid=orderid, sku=sku, version__lt=version).update(**state)


# What the book-compatible write endpoints wait for before they answer (read-your-writes).
READ_MODEL_HANDLERS = (add_allocation_to_read_model, remove_allocation_from_read_model)
