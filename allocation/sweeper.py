"""The sweeper: delivers what the after-commit dispatch did not.

A delivery row is due when it is pending and its `next_attempt_at` has passed: its broker
message was lost (broker down at commit, a web process killed between commit and dispatch, a
worker killed mid-task), or it failed and its backoff is over. The sweeper claims due rows with
`FOR UPDATE SKIP LOCKED`, so several sweepers never claim the same row, and leases them by
moving `next_attempt_at` forward before it dispatches them: if that dispatch is lost too, the
lease runs out and a later sweep tries again. Rows are never polled by "id greater than the last
one seen", which would skip rows that commit out of id order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from allocation.models import Delivery

logger = logging.getLogger(__name__)


def lease_expiry():
    """When a dispatched delivery that is still pending becomes due for the sweeper."""
    return timezone.now() + timedelta(seconds=settings.ALLOCATION_DELIVERY_LEASE)


def claim_due(limit: int) -> list[int]:
    """Claim up to `limit` due deliveries, oldest first, and lease them."""
    with transaction.atomic():
        ids = list(
            Delivery.objects.select_for_update(skip_locked=True)
            .filter(status=Delivery.Status.PENDING, next_attempt_at__lte=timezone.now())
            .order_by("next_attempt_at")
            .values_list("pk", flat=True)[:limit]
        )
        if ids:
            Delivery.objects.filter(pk__in=ids).update(next_attempt_at=lease_expiry())
    return ids


def sweep(dispatch: Callable[[list[int]], None], limit: int | None = None) -> int:
    """Claim due deliveries and dispatch them in chunks; return how many were dispatched."""
    limit = limit or settings.ALLOCATION_SWEEP_BATCH
    ids = claim_due(limit)
    chunk = settings.ALLOCATION_SWEEP_CHUNK
    for start in range(0, len(ids), chunk):
        dispatch(ids[start : start + chunk])
    if ids:
        logger.info("swept %d due deliveries", len(ids))
    return len(ids)


def sweep_for(dispatch: Callable[[list[int]], None], seconds: float) -> int:
    """Sweep batch after batch while whole batches are due, for about `seconds` at most.

    Beat's task: one batch per interval would cap a backlog's drain at
    ALLOCATION_SWEEP_BATCH / ALLOCATION_SWEEP_INTERVAL deliveries a second, whatever the
    workers could do. Stopping at the interval keeps sweeps from piling up behind each other.
    """
    deadline = time.monotonic() + seconds
    total = 0
    while True:
        swept = sweep(dispatch)
        total += swept
        if swept < settings.ALLOCATION_SWEEP_BATCH or time.monotonic() >= deadline:
            return total


def retry(deliveries: Iterable[int]) -> list[int]:
    """Give dead deliveries a fresh set of attempts, due now. Returns the ids revived."""
    with transaction.atomic():
        ids = list(
            Delivery.objects.select_for_update()
            .filter(pk__in=list(deliveries), status=Delivery.Status.DEAD)
            .values_list("pk", flat=True)
        )
        Delivery.objects.filter(pk__in=ids).update(
            status=Delivery.Status.PENDING, attempts=0, next_attempt_at=lease_expiry()
        )
    return ids


def discard(deliveries: Iterable[int]) -> int:
    """Give up on dead deliveries for good; the event log keeps their events."""
    return Delivery.objects.filter(pk__in=list(deliveries), status=Delivery.Status.DEAD).update(
        status=Delivery.Status.DISCARDED, done_at=timezone.now()
    )


def prune(older_than: timedelta) -> int:
    """Delete done and discarded deliveries finished before `older_than` ago. Events stay."""
    cutoff = timezone.now() - older_than
    deleted, _ = Delivery.objects.filter(
        status__in=[Delivery.Status.DONE, Delivery.Status.DISCARDED], done_at__lt=cutoff
    ).delete()
    return deleted
