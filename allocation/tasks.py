"""Celery entry points. Thin: they run a worker step of the delivery runner."""

from __future__ import annotations

import logging
import time

from celery import shared_task
from django.conf import settings

from allocation import database
from allocation.apps import get_runner

logger = logging.getLogger(__name__)


# How long one message keeps a worker stepping in a busy period: long enough that a busy
# period costs few broker messages, short enough that the task never nears its time limit.
BUSY_SECONDS = 1.0


class Interrupted(Exception):
    """The database went away during a step; these deliveries are worth another try soon."""

    def __init__(self, deliveries: list[int]):
        super().__init__(deliveries)
        self.deliveries = deliveries


@shared_task(bind=True, name="allocation.deliver", max_retries=None)
def deliver_task(self, delivery_ids: list[int] | None = None) -> int:
    """A worker step over the due deliveries (and `delivery_ids`, due or not, if pending).

    Sent by the doorbell after commits (allocation/wakeups.py). It answers the doorbell first,
    so later commits ring again. A step that found the work of several requests is a sign of
    a busy period: the worker then holds the doorbell and steps on while there is work (see
    `_step_while_busy`), so that the commits of a busy period send no message at all.

    If the database cannot be reached, the task is tried again within a sweep interval, with
    the deliveries it had taken, for as long as their lease would otherwise hold them back;
    after that the sweep takes them as it takes any due delivery.
    """
    from allocation.wakeups import configured

    wakeups = configured()
    runner = get_runner()
    also = list(delivery_ids or [])
    try:
        if wakeups is not None:
            wakeups.answer_doorbell()
        step = runner.run_due(also=also)
        also = []
        if step.interrupted:
            raise Interrupted(step.interrupted)
        if step.chains <= 1:
            return step.taken  # quiet: a later commit rings for itself
        return step.taken + _step_while_busy(runner, wakeups)
    except Interrupted as cut:
        return _again_soon(self, cut.deliveries)
    except Exception as exc:
        if not database.unavailable(exc):
            raise
        database.heal()
        logger.warning("worker step: the database is unavailable (%s)", exc)
        return _again_soon(self, also)


def _step_while_busy(runner, wakeups) -> int:
    """Hold the doorbell and step on while steps find work, for up to BUSY_SECONDS.

    When a step finds nothing, let go of the doorbell, then look once more: a commit that
    found it held committed before the delete, so this look sees it. Out of time with work
    left, let go and ring, so that another message carries on.
    """
    deadline = time.monotonic() + BUSY_SECONDS
    total = 0
    while True:
        if wakeups is not None:
            wakeups.hold_doorbell()
        while True:
            step = runner.run_due()
            total += step.taken
            if step.interrupted:
                raise Interrupted(step.interrupted)
            if not step.taken:
                break
            if time.monotonic() >= deadline:
                if wakeups is not None:
                    wakeups.answer_doorbell()
                runner.bus.wake_workers(["work left"])
                return total
        if wakeups is None:
            return total
        wakeups.answer_doorbell()
        step = runner.run_due()
        total += step.taken
        if step.interrupted:
            raise Interrupted(step.interrupted)
        if not step.taken:
            return total


def _again_soon(task, unfinished: list[int]) -> int:
    """Retry a step the database cut off, within a sweep interval, while the lease of what it
    took would otherwise keep it waiting."""
    from allocation.outbox import backoff

    retries_left = settings.ALLOCATION_DELIVERY_LEASE / settings.ALLOCATION_SWEEP_INTERVAL
    if task.request.retries >= retries_left:
        return 0  # their lease runs out soon: the sweep takes them then
    countdown = min(backoff(task.request.retries + 1), settings.ALLOCATION_SWEEP_INTERVAL)
    raise task.retry(args=[unfinished], countdown=countdown)


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
