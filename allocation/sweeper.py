"""What operators do to deliveries: retry or discard dead ones, prune finished ones.

Due deliveries need no sweeper of their own: every delivery is due from its commit on, and
worker steps take whatever is due (allocation/delivery.py), whether a doorbell sent them after
a commit or beat sends one every ALLOCATION_SWEEP_INTERVAL seconds (`allocation.sweep`). That
periodic step is the safety net: a lost wake-up, a worker that died holding a lease, a backoff
that has run out.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from allocation.models import Delivery


def retry(deliveries: Iterable[int]) -> list[int]:
    """Give dead deliveries a fresh set of attempts, due now. Returns the ids revived."""
    with transaction.atomic():
        ids = list(
            Delivery.objects.select_for_update()
            .filter(pk__in=list(deliveries), status=Delivery.Status.DEAD)
            .values_list("pk", flat=True)
        )
        Delivery.objects.filter(pk__in=ids).update(
            status=Delivery.Status.PENDING, attempts=0, next_attempt_at=timezone.now()
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
