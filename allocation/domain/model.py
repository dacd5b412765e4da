"""The Product aggregate: batches of one sku, and the rules that allocate order lines to them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from allocation.domain import events


class DomainError(Exception):
    """A request the domain refuses; the message is meant for the caller."""


class InvalidSku(DomainError):
    def __init__(self, sku: str):
        super().__init__(f"Invalid sku {sku}")


class UnknownBatch(DomainError):
    def __init__(self, ref: str):
        super().__init__(f"Unknown batch {ref}")


class DuplicateBatch(DomainError):
    def __init__(self, ref: str):
        super().__init__(f"Batch {ref} already exists")


class InvalidQuantity(DomainError):
    def __init__(self, qty: object):
        super().__init__(f"Quantity must be a positive integer, got {qty!r}")


class AllocationConflict(DomainError):
    def __init__(self, line: OrderLine, existing: Allocation):
        super().__init__(
            f"Order {line.orderid} already has {existing.line.qty} of {line.sku} allocated; "
            f"cancel it before allocating {line.qty}"
        )


class InvalidEta(DomainError):
    def __init__(self, eta: object):
        super().__init__(f"eta must be an ISO date (YYYY-MM-DD) or null, got {eta!r}")


def parse_eta(eta: str | None) -> date | None:
    if eta is None:
        return None
    try:
        return date.fromisoformat(eta)
    except (TypeError, ValueError):
        raise InvalidEta(eta) from None


class NotAllocated(DomainError):
    def __init__(self, orderid: str, sku: str):
        super().__init__(f"Order {orderid} has no allocation of {sku}")


def check_quantity(qty: object) -> int:
    if type(qty) is not int or qty <= 0:
        raise InvalidQuantity(qty)
    return qty


@dataclass(frozen=True)
class OrderLine:
    orderid: str
    sku: str
    qty: int


@dataclass(frozen=True)
class Allocation:
    """An order line placed on a batch, by the product version that placed it."""

    line: OrderLine
    batchref: str
    version: int


class Batch:
    def __init__(
        self,
        ref: str,
        sku: str,
        qty: int,
        eta: date | None = None,
        allocated_quantity: int = 0,
    ):
        self.reference = ref
        self.sku = sku
        self.purchased_quantity = qty
        self.eta = eta
        self.allocated_quantity = allocated_quantity

    def __repr__(self) -> str:
        return f"<Batch {self.reference} {self.allocated_quantity}/{self.purchased_quantity}>"

    @property
    def available_quantity(self) -> int:
        return self.purchased_quantity - self.allocated_quantity

    def can_allocate(self, line: OrderLine) -> bool:
        return self.sku == line.sku and self.available_quantity >= line.qty

    def preference(self) -> tuple[bool, date, str]:
        """Warehouse stock (no eta) first, then the earliest eta; the reference breaks ties."""
        return (self.eta is not None, self.eta or date.min, self.reference)


class Product:
    """The aggregate and consistency boundary: one sku, its batches, and a version.

    `allocations` holds the allocated order lines that the current command can touch, keyed by
    order id: the repository loads the lines a command names (or a batch's lines when its
    quantity changes), never the whole history, so a command costs the same on a sku with ten
    past orders and on one with a million. The batches' allocated quantities are kept as
    counters for the same reason. `released` holds, for the loaded lines that were allocated
    once and are not any more (taken off a batch, or cancelled), the version that released them.
    """

    def __init__(
        self,
        sku: str,
        batches: Iterable[Batch] = (),
        version_number: int = 0,
        allocations: Iterable[Allocation] = (),
        released: dict[str, int] | None = None,
    ):
        self.sku = sku
        self.batches = list(batches)
        self.version_number = version_number
        self.allocations = {a.line.orderid: a for a in allocations}
        self.released = dict(released or {})
        self.events: list[events.Event] = []

    def __repr__(self) -> str:
        return f"<Product {self.sku} v{self.version_number}>"

    def batch(self, ref: str) -> Batch:
        for b in self.batches:
            if b.reference == ref:
                return b
        raise UnknownBatch(ref)

    def add_batch(self, ref: str, qty: int, eta: date | None) -> Batch:
        check_quantity(qty)
        if any(b.reference == ref for b in self.batches):
            raise DuplicateBatch(ref)
        batch = Batch(ref, self.sku, qty, eta)
        self.batches.append(batch)
        self._bump()
        self._record(
            events.BatchCreated(
                ref=ref,
                sku=self.sku,
                qty=qty,
                eta=eta.isoformat() if eta else None,
                version=self.version_number,
            )
        )
        return batch

    def allocate(self, line: OrderLine, unless_changed_since: int | None = None) -> str | None:
        """Place the line on the preferred batch that fits; return its reference.

        Allocating a line that is already allocated with the same quantity changes nothing and
        returns the same batch. When nothing fits, nothing changes and OutOfStock is recorded.
        With `unless_changed_since` (a reallocation: the version that took the line off), a
        line that changed since (allocated again, or cancelled, by its client) is left as it is.
        """
        check_quantity(line.qty)
        existing = self.allocations.get(line.orderid)
        if unless_changed_since is not None and self.last_change(line.orderid) > (
            unless_changed_since
        ):
            return existing.batchref if existing else None
        if existing is not None:
            if existing.line != line:
                raise AllocationConflict(line, existing)
            return existing.batchref
        for batch in sorted(self.batches, key=Batch.preference):
            if batch.can_allocate(line):
                self._bump()
                self._place(line, batch)
                return batch.reference
        self._record(events.OutOfStock(sku=self.sku, version=self.version_number))
        return None

    def change_batch_quantity(self, ref: str, qty: int) -> None:
        """Set the purchased quantity; lines that no longer fit are deallocated, latest first."""
        check_quantity(qty)
        batch = self.batch(ref)
        batch.purchased_quantity = qty
        self._bump()
        self._record(
            events.BatchQuantityChanged(ref=ref, sku=self.sku, qty=qty, version=self.version_number)
        )
        latest_first = sorted(
            (a for a in self.allocations.values() if a.batchref == ref),
            key=lambda a: (a.version, a.line.orderid),
            reverse=True,
        )
        for allocation in latest_first:
            if batch.available_quantity >= 0:
                break
            self._remove(allocation, events.Deallocated)
        if batch.available_quantity < 0:
            raise AssertionError(f"{batch!r} is over-allocated but its lines were not loaded")

    def cancel(self, orderid: str) -> Allocation:
        """Free an order line's stock. The line is not reallocated."""
        allocation = self.allocations.get(orderid)
        if allocation is None:
            raise NotAllocated(orderid, self.sku)
        self._bump()
        self._remove(allocation, events.AllocationCancelled)
        return allocation

    def last_change(self, orderid: str) -> int:
        """The version of the last change to a loaded line (0: never allocated)."""
        if orderid in self.allocations:
            return self.allocations[orderid].version
        return self.released.get(orderid, 0)

    def _place(self, line: OrderLine, batch: Batch) -> None:
        batch.allocated_quantity += line.qty
        self.released.pop(line.orderid, None)
        self.allocations[line.orderid] = Allocation(line, batch.reference, self.version_number)
        self._record(
            events.Allocated(
                orderid=line.orderid,
                sku=line.sku,
                qty=line.qty,
                batchref=batch.reference,
                version=self.version_number,
            )
        )

    def _remove(
        self,
        allocation: Allocation,
        event_type: type[events.Deallocated] | type[events.AllocationCancelled],
    ) -> None:
        line = allocation.line
        self.batch(allocation.batchref).allocated_quantity -= line.qty
        del self.allocations[line.orderid]
        self.released[line.orderid] = self.version_number
        self._record(
            event_type(
                orderid=line.orderid,
                sku=line.sku,
                qty=line.qty,
                batchref=allocation.batchref,
                version=self.version_number,
            )
        )

    def _bump(self) -> None:
        self.version_number += 1

    def _record(self, event: events.Event) -> None:
        self.events.append(event)
