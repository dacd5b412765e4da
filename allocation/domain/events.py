"""Domain events: what happened. Zero or more handlers each, every one failing on its own.

Each event carries the sku and the version of the product it happened to, so that read
models can order them; the envelope (id, time, correlation and causation) is added by the
unit of work when the event is written to the outbox.
"""

import dataclasses
from dataclasses import dataclass
from typing import Any


class Event:
    sku: str
    version: int

    def to_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        return fields


@dataclass(frozen=True)
class BatchCreated(Event):
    ref: str
    sku: str
    qty: int
    eta: str | None  # ISO date: events hold JSON-able fields only
    version: int


@dataclass(frozen=True)
class BatchQuantityChanged(Event):
    ref: str
    sku: str
    qty: int
    version: int


@dataclass(frozen=True)
class Allocated(Event):
    orderid: str
    sku: str
    qty: int
    batchref: str
    version: int


@dataclass(frozen=True)
class Deallocated(Event):
    orderid: str
    sku: str
    qty: int
    batchref: str
    version: int


@dataclass(frozen=True)
class AllocationCancelled(Event):
    orderid: str
    sku: str
    qty: int
    batchref: str
    version: int


@dataclass(frozen=True)
class OutOfStock(Event):
    sku: str
    version: int


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        BatchCreated,
        BatchQuantityChanged,
        Allocated,
        Deallocated,
        AllocationCancelled,
        OutOfStock,
    )
}


def event_from_dict(type_name: str, data: dict[str, Any]) -> Event:
    """Rebuild an event from its outbox row (type name and JSON payload)."""
    return EVENT_TYPES[type_name](**data)
