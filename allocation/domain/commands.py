"""Commands: what a caller asks the service to do. Each has exactly one handler."""

from dataclasses import dataclass


class Command:
    pass


@dataclass(frozen=True)
class CreateBatch(Command):
    ref: str
    sku: str
    qty: int
    eta: str | None = None  # ISO date; None for stock already in the warehouse


@dataclass(frozen=True)
class Allocate(Command):
    orderid: str
    sku: str
    qty: int
    # Set by the reallocation of a line taken off its batch: the version that took it off. If
    # the line changed since (its client allocated it again, or cancelled it), it is left alone.
    unless_changed_since: int | None = None


@dataclass(frozen=True)
class ChangeBatchQuantity(Command):
    ref: str
    qty: int


@dataclass(frozen=True)
class CancelAllocation(Command):
    orderid: str
    sku: str
