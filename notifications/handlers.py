"""Event handlers that tell the outside world. Their effects are at-least-once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from allocation.domain import events
from notifications.adapters import EmailNotifications

Publish = Callable[[str, dict[str, Any]], None]


def send_out_of_stock_notification(
    event: events.OutOfStock, notifications: EmailNotifications
) -> None:
    notifications.send(f"Out of stock: {event.sku}", f"Out of stock for {event.sku}")


def publish_allocated_event(event: events.Allocated, publish: Publish) -> None:
    publish(
        "line_allocated",
        {"orderid": event.orderid, "sku": event.sku, "qty": event.qty, "batchref": event.batchref},
    )
