"""The outbox: events written with the change that caused them, and their deliveries.

Each event row has one delivery row per subscribed handler. A delivery is claimed with a row
lock that skips rows another worker holds, so a task that arrives twice runs its handler once.
"""

from __future__ import annotations

import random
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import F, Value
from django.db.models.functions import Concat
from django.utils import timezone

from allocation.domain import events
from allocation.models import Delivery, StoredEvent
from allocation.sweeper import lease_expiry

if TYPE_CHECKING:
    from allocation.unit_of_work import MessageContext


@dataclass(frozen=True)
class PendingDelivery:
    id: int
    handler: str
    event: events.Event
    event_id: str
    correlation_id: str


def backoff(attempts: int) -> float:
    """Seconds before the next attempt: exponential, capped, with full jitter."""
    ceiling = min(
        settings.ALLOCATION_DELIVERY_BACKOFF_MAX,
        settings.ALLOCATION_DELIVERY_BACKOFF_BASE * 2 ** (attempts - 1),
    )
    return random.uniform(ceiling / 2, ceiling)


class DjangoDeliveryRepository:
    def add(
        self,
        new_events: list[events.Event],
        subscriptions: Mapping[str, tuple[str, ...]],
        context: MessageContext,
    ) -> list[int]:
        now = timezone.now()
        due = lease_expiry()
        rows = StoredEvent.objects.bulk_create(
            StoredEvent(
                id=uuid.uuid4(),
                type=type(event).__name__,
                sku=event.sku,
                version=event.version,
                payload=event.to_dict(),
                occurred_at=now,
                correlation_id=context.correlation_id,
                causation_id=context.causation_id,
                position=position,
            )
            for position, event in enumerate(new_events)
        )
        deliveries = Delivery.objects.bulk_create(
            Delivery(event_id=row.id, handler=handler, next_attempt_at=due)
            for row in rows
            for handler in subscriptions.get(row.type, ())
        )
        return [d.pk for d in deliveries]

    def start(self, delivery_ids: list[int]) -> list[tuple[int, str]]:
        rows = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(pk__in=delivery_ids, status=Delivery.Status.PENDING)
            .order_by("pk")
            .values_list("pk", "handler", "attempts")
        )
        limit = settings.ALLOCATION_DELIVERY_MAX_ATTEMPTS
        exhausted = [pk for pk, _, attempts in rows if attempts >= limit]
        if exhausted:
            Delivery.objects.filter(pk__in=exhausted).update(
                status=Delivery.Status.DEAD,
                last_error=Concat(
                    F("last_error"),
                    Value(f"\nGave up: {limit} attempts did not finish (a crash or a timeout?)"),
                ),
            )
        started = [(pk, handler) for pk, handler, attempts in rows if attempts < limit]
        Delivery.objects.filter(pk__in=[pk for pk, _ in started]).update(attempts=F("attempts") + 1)
        return started

    def claim(self, delivery_ids: list[int]) -> list[PendingDelivery]:
        rows = (
            Delivery.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(pk__in=delivery_ids, status=Delivery.Status.PENDING)
            .order_by("pk")
            .values_list(
                "pk",
                "handler",
                "event_id",
                "event__type",
                "event__payload",
                "event__correlation_id",
            )
        )
        return [
            PendingDelivery(
                id=pk,
                handler=handler,
                event=events.event_from_dict(type_name, payload),
                event_id=str(event_id),
                correlation_id=correlation_id,
            )
            for pk, handler, event_id, type_name, payload, correlation_id in rows
        ]

    def mark_done(self, delivery_ids: list[int]) -> None:
        if delivery_ids:
            Delivery.objects.filter(pk__in=delivery_ids).update(
                status=Delivery.Status.DONE, done_at=timezone.now()
            )

    def record_failure(self, delivery_id: int, error: BaseException, final: bool = False) -> None:
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None or delivery.status != Delivery.Status.PENDING:
            return
        # Its attempt was counted when it started.
        delivery.last_error = "".join(traceback.format_exception(error))
        if final or delivery.attempts >= settings.ALLOCATION_DELIVERY_MAX_ATTEMPTS:
            delivery.status = Delivery.Status.DEAD
        else:
            delivery.next_attempt_at = timezone.now() + timedelta(
                seconds=backoff(delivery.attempts)
            )
        delivery.save(update_fields=["last_error", "status", "next_attempt_at"])


def wait_for_deliveries(correlation_id: str, handlers: Iterable[str], timeout: float) -> bool:
    """Wait, at most `timeout` seconds, until the chain's deliveries to `handlers` are done.

    Read-your-writes for clients that read a read model straight after a write. Returns False
    on timeout; the write itself has committed either way.
    """
    pending = Delivery.objects.filter(
        event__correlation_id=correlation_id,
        handler__in=list(handlers),
        status=Delivery.Status.PENDING,
    )
    deadline = time.monotonic() + timeout
    pause = 0.002
    while pending.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return True
