"""Celery entry points. Thin: they take ids and hand them to the bus."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from allocation.apps import get_bus


@shared_task(name="allocation.deliver")
def deliver_task(delivery_ids: list[int]) -> None:
    """Run these (event, handler) deliveries; each succeeds or fails on its own."""
    get_bus().deliver_all(delivery_ids)


def dispatch_deliveries(delivery_ids: list[int]) -> None:
    """Publish committed deliveries: one broker message per commit, or one per delivery."""
    if settings.ALLOCATION_DISPATCH_PER_COMMIT:
        deliver_task.delay(delivery_ids)
    else:
        for delivery_id in delivery_ids:
            deliver_task.delay([delivery_id])


@shared_task(name="allocation.sweep", ignore_result=True)
def sweep_task() -> int:
    """Beat runs this every ALLOCATION_SWEEP_INTERVAL seconds: re-dispatch due deliveries,
    batch after batch while whole batches are due, for at most one interval."""
    from allocation.sweeper import sweep_for

    return sweep_for(dispatch_deliveries, settings.ALLOCATION_SWEEP_INTERVAL)
