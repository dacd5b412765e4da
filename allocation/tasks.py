"""Celery entry points. Thin: they run a worker step of the delivery runner."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from django.conf import settings

from allocation import database
from allocation.apps import get_runner

logger = logging.getLogger(__name__)


@shared_task(bind=True, name="allocation.deliver", max_retries=None)
def deliver_task(self, delivery_ids: list[int] | None = None) -> int:
    """A worker step: run the due deliveries (and `delivery_ids`, due or not, if pending).

    Sent by the doorbell after commits (allocation/wakeups.py). If the database cannot be
    reached, the step is tried again within a sweep interval, with the deliveries it had
    taken, for as long as their lease would otherwise hold them back; after that the sweeper
    takes them as it takes any due delivery.
    """
    from allocation.outbox import backoff
    from allocation.wakeups import configured

    if (wakeups := configured()) is not None:
        wakeups.answer_doorbell()  # before taking anything: see wakeups.py
    try:
        step = get_runner().run_due(also=delivery_ids or [])
        unfinished = step.interrupted
    except Exception as exc:
        if not database.unavailable(exc):
            raise
        database.heal()
        unfinished = list(delivery_ids or [])
        logger.warning("worker step: the database is unavailable (%s)", exc)
    else:
        if not unfinished:
            return step.taken
    retries_left = settings.ALLOCATION_DELIVERY_LEASE / settings.ALLOCATION_SWEEP_INTERVAL
    if self.request.retries >= retries_left:
        return 0  # their lease runs out soon: the sweeper takes them then
    countdown = min(backoff(self.request.retries + 1), settings.ALLOCATION_SWEEP_INTERVAL)
    raise self.retry(args=[unfinished], countdown=countdown)


def send_step() -> None:
    """Send one worker step to the broker (run in-process when tasks are eager)."""
    deliver_task.delay()


@shared_task(name="allocation.sweep", ignore_result=True)
def sweep_task() -> int:
    """Beat runs this every ALLOCATION_SWEEP_INTERVAL seconds: worker steps over whatever is
    due (a lost wake-up, a lease run out, a backoff over), step after step while whole
    batches are due, for at most one interval."""
    runner = get_runner()
    deadline = time.monotonic() + settings.ALLOCATION_SWEEP_INTERVAL
    total = 0
    while True:
        step = runner.run_due()
        total += step.taken
        if step.interrupted:  # the database went away mid-step: try those again soon
            deliver_task.apply_async(
                args=[step.interrupted], countdown=settings.ALLOCATION_SWEEP_INTERVAL
            )
        if step.taken < runner.batch_size or time.monotonic() >= deadline:
            if total:
                logger.info("swept %d due deliveries", total)
            return total
