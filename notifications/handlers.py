"""Event handlers that tell the outside world. Their effects are at-least-once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from allocation.domain import events
from notifications.adapters import EmailNotifications, RedisChannels

Publish = Callable[[str, dict[str, Any]], None]


def send_out_of_stock_notification(
    event: events.OutOfStock, notifications: EmailNotifications, event_id: str
) -> None:
    notifications.send(
        f"Out of stock: {event.sku}",
        f"Out of stock for {event.sku}: an order line could not be allocated.",
        dedup_key=event_id,
        kind="out_of_stock_email",
    )


def publish_allocated_event(event: events.Allocated, publish: Publish, event_id: str) -> None:
    """Publish on `line_allocated`; `event_id` lets subscribers drop a repeated message."""
    publish(
        "line_allocated",
        {
            "orderid": event.orderid,
            "sku": event.sku,
            "qty": event.qty,
            "batchref": event.batchref,
            "event_id": event_id,
        },
    )


def append_to_event_stream(event: events.Event, event_stream: RedisChannels, event_id: str) -> None:
    """Every domain event, in the durable stream integrators read (`allocation.events`)."""
    event_stream.append(event_id, type(event).__name__, event.to_dict())
