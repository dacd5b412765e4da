"""The outbox: events written with the change that caused them, and their deliveries.

Each event row has one delivery row per subscribed handler. A delivery is claimed with a row
lock that skips rows another worker holds, so a task that arrives twice runs its handler once.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone
from redis.exceptions import RedisError

from allocation.domain import events
from allocation.models import Delivery, StoredEvent
from allocation.sweeper import lease_expiry
from allocation.wakeups import RedisWakeups
from allocation.wakeups import configured as configured_wakeups

if TYPE_CHECKING:
    from allocation.unit_of_work import MessageContext

logger = logging.getLogger(__name__)

WAKEUP_SLICE = 0.25  # seconds


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

    def start(self, delivery_ids: list[int]) -> list[PendingDelivery]:
        """Count an attempt for each of these deliveries that is pending and that no other
        worker holds; park those already out of attempts as dead. Returns the ones to run.

        One UPDATE ... RETURNING (raw SQL: the ORM's update() returns no rows) then one read
        of their events. Call it outside a transaction: the counts commit at once, so a
        handler that kills its process has still used an attempt.
        """
        if not delivery_ids:
            return []
        limit = settings.ALLOCATION_DELIVERY_MAX_ATTEMPTS
        gave_up = f"\nGave up: {limit} attempts did not finish (a crash or a timeout?)"
        skip_locked = connection.features.has_select_for_update_skip_locked
        ids = list(delivery_ids)
        table = Delivery._meta.db_table
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET"
                "  attempts = CASE WHEN attempts < %s THEN attempts + 1 ELSE attempts END,"
                "  status = CASE WHEN attempts < %s THEN status ELSE %s END,"
                "  last_error = CASE WHEN attempts < %s THEN last_error ELSE last_error || %s END"
                f" WHERE id IN (SELECT id FROM {table}"
                f"  WHERE id IN ({', '.join(['%s'] * len(ids))}) AND status = %s"
                f"  ORDER BY id{' FOR UPDATE SKIP LOCKED' if skip_locked else ''})"
                " RETURNING id, handler, status, event_id",
                [limit, limit, Delivery.Status.DEAD, limit, gave_up, *ids, Delivery.Status.PENDING],
            )
            rows = sorted(cursor.fetchall())
        dead = [pk for pk, _, status, _ in rows if status == Delivery.Status.DEAD]
        if dead:
            logger.warning("gave up on deliveries %s: out of attempts", dead)
        started = [
            (pk, handler, uuid.UUID(str(event_id)))
            for pk, handler, status, event_id in rows
            if status != Delivery.Status.DEAD
        ]
        logged = {
            event_id: (type_name, payload, correlation_id)
            for event_id, type_name, payload, correlation_id in StoredEvent.objects.filter(
                pk__in={event_id for _, _, event_id in started}
            ).values_list("id", "type", "payload", "correlation_id")
        }
        return [
            PendingDelivery(
                id=pk,
                handler=handler,
                event=events.event_from_dict(logged[event_id][0], logged[event_id][1]),
                event_id=str(event_id),
                correlation_id=logged[event_id][2],
            )
            for pk, handler, event_id in started
        ]

    def claim(self, deliveries: list[PendingDelivery]) -> list[PendingDelivery]:
        """Lock those of `deliveries` still pending, skipping any another worker holds."""
        locked = set(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(pk__in=[d.id for d in deliveries], status=Delivery.Status.PENDING)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        return [d for d in deliveries if d.id in locked]

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


def wait_for_deliveries(
    correlation_id: str,
    handlers: Iterable[str],
    timeout: float,
    wakeups: RedisWakeups | Literal["configured"] | None = "configured",
) -> bool:
    """Wait, at most `timeout` seconds, until the chain's deliveries to `handlers` are done.

    Read-your-writes for clients that read a read model straight after a write. Returns False
    on timeout; the write itself has committed either way. With Redis, the worker's ring wakes
    the wait (see wakeups.py); without it, or if Redis fails, it polls with growing pauses.
    """
    if wakeups == "configured":
        wakeups = configured_wakeups()
    pending = Delivery.objects.filter(
        event__correlation_id=correlation_id,
        handler__in=list(handlers),
        status=Delivery.Status.PENDING,
    )
    deadline = time.monotonic() + timeout
    pause = 0.002
    try:
        while pending.exists():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if wakeups is not None:
                try:
                    # A slice, not the whole wait: a ring lost with its worker costs one slice.
                    wakeups.wait(correlation_id, min(remaining, WAKEUP_SLICE))
                    continue
                except RedisError as exc:
                    logger.warning("read-your-writes polls: no wake-ups from Redis (%s)", exc)
                    wakeups = None
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, 0.05)
    except DatabaseError as exc:
        # The write committed before this wait began: its answer is a success, whatever the
        # database does now. The read models catch up once the database is back.
        logger.warning("read-your-writes cut short: the database failed (%s)", exc)
        return False
    return True
