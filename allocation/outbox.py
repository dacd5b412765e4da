"""The outbox: events written with the change that caused them, and their deliveries.

Each event row has one delivery row per subscribed handler, due as soon as it commits. A
worker step takes due deliveries in one statement (`take_due`: it counts an attempt and leases
each one, skipping rows another step holds); a step that dies leaves them to come due again
when the lease runs out. A delivery's done-mark commits with its effects.
"""

from __future__ import annotations

import json
import logging
import random
import traceback
import uuid
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection
from django.utils import timezone

from allocation.domain import events
from allocation.models import Delivery, StoredEvent
from allocation.unit_of_work import NewDelivery, PendingDelivery

if TYPE_CHECKING:
    from allocation.unit_of_work import MessageContext

logger = logging.getLogger(__name__)

DELIVERY = Delivery._meta.db_table
EVENT = StoredEvent._meta.db_table
PENDING, DEAD = Delivery.Status.PENDING.value, Delivery.Status.DEAD.value


def backoff(attempts: int) -> float:
    """Seconds before the next attempt: exponential, capped, with full jitter."""
    ceiling = min(
        settings.ALLOCATION_DELIVERY_BACKOFF_MAX,
        settings.ALLOCATION_DELIVERY_BACKOFF_BASE * 2 ** (attempts - 1),
    )
    return random.uniform(ceiling / 2, ceiling)


def lease_expiry():
    """Until when a step that took a delivery holds it; then it is due again."""
    return timezone.now() + timedelta(seconds=settings.ALLOCATION_DELIVERY_LEASE)


class DjangoDeliveryRepository:
    def add(
        self,
        new_events: list[events.Event],
        subscriptions: Mapping[str, tuple[str, ...]],
        context: MessageContext,
    ) -> list[NewDelivery]:
        now = timezone.now()
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
            Delivery(event_id=row.id, handler=handler, next_attempt_at=now)
            for row in rows
            for handler in subscriptions.get(row.type, ())
        )
        return [NewDelivery(d.pk, d.handler) for d in deliveries]

    def take_due(self, limit: int, also: Sequence[int] = ()) -> list[PendingDelivery]:
        """Count an attempt for, and lease, up to `limit` due deliveries and those of `also`
        still pending, skipping rows another step holds; park the ones out of attempts as dead.

        On PostgreSQL one statement (UPDATE ... FROM the event log ... RETURNING): the counts
        commit at once, so a handler that kills its process has still used an attempt.
        """
        max_attempts = settings.ALLOCATION_DELIVERY_MAX_ATTEMPTS
        gave_up = f"\nGave up: {max_attempts} attempts did not finish (a crash or a timeout?)"
        now, lease = timezone.now(), lease_expiry()
        skip = (
            " FOR UPDATE SKIP LOCKED"
            if connection.features.has_select_for_update_skip_locked
            else ""
        )
        also = list(also)
        # The due ones oldest first (the partial index delivery_due), and the named ones.
        chosen = (
            f"WITH due AS (SELECT id FROM {DELIVERY} WHERE status = %s AND next_attempt_at <= %s"
            f" ORDER BY next_attempt_at LIMIT %s{skip}),"
            f" named AS (SELECT id FROM {DELIVERY} WHERE status = %s AND id IN"
            f" ({', '.join(['%s'] * len(also)) or 'NULL'}){skip}) "
        )
        params: list = [PENDING, now, limit, PENDING, *also]
        update = (
            f"UPDATE {DELIVERY} SET"
            "  attempts = CASE WHEN attempts < %s THEN attempts + 1 ELSE attempts END,"
            "  status = CASE WHEN attempts < %s THEN status ELSE %s END,"
            "  last_error = CASE WHEN attempts < %s THEN last_error ELSE last_error || %s END,"
            "  next_attempt_at = %s"
        )
        params += [max_attempts, max_attempts, DEAD, max_attempts, gave_up, lease]
        # An array of ids on PostgreSQL: an OR of two IN (...) made it scan every row.
        ids = "SELECT id FROM due UNION ALL SELECT id FROM named"
        postgres = connection.vendor == "postgresql"
        taken = f" {DELIVERY}.id = ANY(ARRAY({ids}))" if postgres else f" id IN ({ids})"
        with connection.cursor() as cursor:
            if postgres:
                cursor.execute(
                    f"{chosen}{update} FROM {EVENT} AS e WHERE e.id = {DELIVERY}.event_id"
                    f" AND{taken} RETURNING {DELIVERY}.id, handler, status, e.id, e.type,"
                    " e.payload, e.correlation_id",
                    params,
                )
                rows = cursor.fetchall()
            else:  # SQLite: RETURNING may not name a joined table
                cursor.execute(
                    f"{chosen}{update} WHERE{taken} RETURNING id, handler, status, event_id",
                    params,
                )
                found = cursor.fetchall()
                logged = {
                    str(event_id): (type_name, payload, correlation_id)
                    for event_id, type_name, payload, correlation_id in StoredEvent.objects.filter(
                        pk__in={uuid.UUID(str(event_id)) for *_, event_id in found}
                    ).values_list("id", "type", "payload", "correlation_id")
                }
                rows = [(pk, h, s, e, *logged[str(uuid.UUID(str(e)))]) for pk, h, s, e in found]
        rows.sort()
        dead = [pk for pk, _, status, *_ in rows if status == DEAD]
        if dead:
            logger.warning("gave up on deliveries %s: out of attempts", dead)
        return [
            PendingDelivery(
                id=pk,
                handler=handler,
                event=events.event_from_dict(type_name, _json(payload)),
                event_id=str(uuid.UUID(str(event_id))),
                correlation_id=correlation_id,
            )
            for pk, handler, status, event_id, type_name, payload, correlation_id in rows
            if status != DEAD
        ]

    def lock(self, deliveries: list[PendingDelivery]) -> list[PendingDelivery]:
        """Lock those of `deliveries` still pending, skipping any another worker holds."""
        locked = set(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(pk__in=[d.id for d in deliveries], status=Delivery.Status.PENDING)
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        return [d for d in deliveries if d.id in locked]

    def mark_done(self, delivery_ids: list[int]) -> None:
        """One statement for the lot (raw SQL: the ORM's update costs more to build than to
        run, and a worker step runs it for every set it applies)."""
        if not delivery_ids:
            return
        ids = list(delivery_ids)
        if connection.vendor == "postgresql":
            where, params = "id = ANY(%s)", [ids]
        else:
            where, params = f"id IN ({', '.join(['%s'] * len(ids))})", ids
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {DELIVERY} SET status = %s, done_at = %s WHERE {where}",
                [Delivery.Status.DONE.value, timezone.now(), *params],
            )

    def record_failure(self, delivery_id: int, error: BaseException, final: bool = False) -> None:
        delivery = Delivery.objects.select_for_update().filter(pk=delivery_id).first()
        if delivery is None or delivery.status != Delivery.Status.PENDING:
            return
        # Its attempt was counted when it was taken.
        delivery.last_error = "".join(traceback.format_exception(error))
        if final or delivery.attempts >= settings.ALLOCATION_DELIVERY_MAX_ATTEMPTS:
            delivery.status = Delivery.Status.DEAD
        else:
            delivery.next_attempt_at = timezone.now() + timedelta(
                seconds=backoff(delivery.attempts)
            )
        delivery.save(update_fields=["last_error", "status", "next_attempt_at"])


def _json(payload):
    """A JSON column read by a raw cursor: parsed already on PostgreSQL, text on SQLite."""
    return json.loads(payload) if isinstance(payload, str) else payload
