"""Queries of the outbox for the operational endpoints: the event log and delivery status.

These read the write side's own tables on purpose: they show the outbox as it is, not a
projection of it.
"""

from __future__ import annotations

from django.db.models import F, QuerySet

from allocation.models import Delivery, StoredEvent


def event_log(
    sku: str | None = None, type: str | None = None, correlation_id: str | None = None
) -> QuerySet:
    """Stored events, optionally of one sku, type or correlation id."""
    filters = {"sku": sku, "type": type, "correlation_id": correlation_id}
    return StoredEvent.objects.filter(**{k: v for k, v in filters.items() if v is not None})


def delivery_status(status: str | None = None, event: str | None = None) -> QuerySet:
    """(event, handler) deliveries, dead and discarded ones included, with their event's type."""
    filters = {"status": status, "event_id": event}
    return (
        Delivery.objects.filter(**{k: v for k, v in filters.items() if v is not None})
        .annotate(event_type=F("event__type"), sku=F("event__sku"))
        .values(
            "id",
            "event_id",
            "event_type",
            "sku",
            "handler",
            "status",
            "attempts",
            "last_error",
            "next_attempt_at",
            "done_at",
        )
    )
