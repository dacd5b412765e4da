"""Command handlers, and the write side's own event handler (reallocation).

Each handler loads one product through the unit of work, asks the aggregate to decide, and
commits; the events the aggregate recorded go to the outbox in the same transaction.
"""

from __future__ import annotations

from allocation.domain import commands, events
from allocation.domain.model import (
    DuplicateBatch,
    InvalidSku,
    OrderLine,
    Product,
    UnknownBatch,
    check_quantity,
    parse_eta,
)
from allocation.unit_of_work import AbstractUnitOfWork


def add_batch(cmd: commands.CreateBatch, uow: AbstractUnitOfWork) -> str:
    """Create a batch, and its product when the sku is new."""
    eta = parse_eta(cmd.eta)
    with uow:
        if uow.products.batch_exists(cmd.ref):
            raise DuplicateBatch(cmd.ref)
        product = uow.products.get(cmd.sku)
        if product is None:
            product = Product(cmd.sku)
            uow.products.add(product)
        product.add_batch(cmd.ref, cmd.qty, eta)
        uow.commit()
    return cmd.ref


def allocate(cmd: commands.Allocate, uow: AbstractUnitOfWork) -> str | None:
    """Allocate an order line; return the batch reference, or None when out of stock."""
    line = OrderLine(cmd.orderid, cmd.sku, cmd.qty)
    with uow:
        product = uow.products.get(line.sku, orderid=line.orderid)
        if product is None:
            raise InvalidSku(line.sku)
        batchref = product.allocate(line, cmd.unless_changed_since)
        uow.commit()
    return batchref


def change_batch_quantity(cmd: commands.ChangeBatchQuantity, uow: AbstractUnitOfWork) -> None:
    """Change a batch's quantity; lines that no longer fit are deallocated (and reallocated)."""
    check_quantity(cmd.qty)  # before the repository uses it to pick the lines to load
    with uow:
        product = uow.products.get_by_batchref(cmd.ref, keep=cmd.qty)
        if product is None:
            raise UnknownBatch(cmd.ref)
        product.change_batch_quantity(cmd.ref, cmd.qty)
        uow.commit()


def cancel_allocation(cmd: commands.CancelAllocation, uow: AbstractUnitOfWork) -> str:
    """Free an order line's stock; return the batch it was on."""
    with uow:
        product = uow.products.get(cmd.sku, orderid=cmd.orderid)
        if product is None:
            raise InvalidSku(cmd.sku)
        allocation = product.cancel(cmd.orderid)
        uow.commit()
    return allocation.batchref


def reallocate(event: events.Deallocated) -> list[commands.Command]:
    """A deallocated line goes back through allocation (another batch, or OutOfStock), unless
    its client has allocated it again or cancelled it since it was taken off."""
    return [
        commands.Allocate(
            orderid=event.orderid,
            sku=event.sku,
            qty=event.qty,
            unless_changed_since=event.version,
        )
    ]
