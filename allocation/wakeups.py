"""Wake-ups through Redis, both ways, so that nobody polls the database on the happy path.

The doorbell (web -> worker). After a commit, a process sets a short-lived key with NX and
sends a Celery message only if it set the key. The worker that gets the message runs steps
while there is work, the key still set, so the commits of a busy period cost no message at
all; once a step finds nothing due, the worker deletes the key and then looks once more. So a
commit that found the key set is always seen: it committed before it looked at the key, and
the key was still there, so the worker's last look (after the delete) comes after the commit.
If the message is lost, the key expires after `doorbell_ttl()` seconds; by then beat's sweep
has taken the deliveries anyway (they are due from their commit on).

The ring (worker -> web). When a worker commits read-model projections, it pushes the ids of
those deliveries on a short-lived list named by their correlation id. A web process waiting
for its command's projections (read-your-writes) blocks on that list and is done when it has
seen all of its own delivery ids: a ring is proof. The database is asked only when a wait
slice passes without a ring (a ring lost with its worker, or no Redis at all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from functools import cache

import redis
from django.conf import settings
from django.db import DatabaseError
from redis.exceptions import RedisError

from allocation.unit_of_work import NewDelivery, PendingDelivery, Receipt

logger = logging.getLogger(__name__)

DOORBELL = "allocation:doorbell"
RING = "allocation:ryw:{}"
RING_TTL = 60  # seconds a ring waits for a reader; nobody may be waiting at all
WAIT_SLICE = 0.5  # seconds a wait blocks on Redis before it asks the database


class RedisWakeups:
    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5)

    # --- the doorbell --------------------------------------------------------------------------

    def ring_doorbell(self, send: Callable[[], object]) -> None:
        """Make sure a worker step will look at the due deliveries; `send` sends one."""
        try:
            first = self.client.set(DOORBELL, 1, nx=True, ex=doorbell_ttl())
        except RedisError as exc:
            logger.warning("doorbell unavailable (%s); sending a worker step anyway", exc)
            first = True
        if not first:
            return  # a step is on its way, and it will see this commit
        try:
            send()
        except Exception:
            self.answer_doorbell()  # the next commit must try again
            raise

    def answer_doorbell(self) -> None:
        """The worker has no more work in hand: commits from now on ring again."""
        try:
            self.client.delete(DOORBELL)
        except RedisError as exc:
            logger.warning("could not answer the doorbell (%s); it expires by itself", exc)

    def hold_doorbell(self) -> None:
        """The worker is busy and will look again: commits need not ring."""
        try:
            self.client.set(DOORBELL, 1, ex=doorbell_ttl())
        except RedisError as exc:
            logger.warning("could not hold the doorbell (%s)", exc)

    # --- the ring --------------------------------------------------------------------------------

    def ring(self, done: dict[str, list[int]]) -> None:
        """Tell each correlation id's waiters which of its deliveries are done."""
        pipe = self.client.pipeline(transaction=False)
        for correlation_id, ids in done.items():
            key = RING.format(correlation_id)
            pipe.rpush(key, ",".join(map(str, ids)))
            pipe.expire(key, RING_TTL)
        pipe.execute()

    def wait(self, correlation_id: str, timeout: float) -> list[int]:
        """Delivery ids rung for `correlation_id` (perhaps rung before the call), or [] after
        `timeout` seconds (at most 4: the client's socket timeout is 5)."""
        rung = self.client.blpop([RING.format(correlation_id)], timeout=min(timeout, 4.0))
        if rung is None:
            return []
        return [int(i) for i in rung[1].split(b",") if i]


def doorbell_ttl() -> int:
    return max(1, round(settings.ALLOCATION_SWEEP_INTERVAL))


@cache
def configured() -> RedisWakeups | None:
    """This process's wake-ups from settings; None without Redis (or with eager tasks, which
    run in the committing process: nobody needs waking)."""
    if not settings.REDIS_URL or settings.CELERY_TASK_ALWAYS_EAGER:
        return None
    return RedisWakeups(settings.REDIS_URL)


def doorbell(
    wakeups: RedisWakeups | None, send: Callable[[], object]
) -> Callable[[list[NewDelivery]], None]:
    """The bus's `wake`: ring the doorbell (or, without Redis, send a step every time)."""

    def wake(deliveries: list[NewDelivery]) -> None:
        if wakeups is None:
            send()
        else:
            wakeups.ring_doorbell(send)

    return wake


def ring_read_models(wakeups: RedisWakeups, read_model_handlers: Collection[str]):
    """The runner's `on_delivered`: ring the chains whose projections just committed."""

    def on_delivered(deliveries: list[PendingDelivery]) -> None:
        done: dict[str, list[int]] = {}
        for d in deliveries:
            if d.handler in read_model_handlers:
                done.setdefault(d.correlation_id, []).append(d.id)
        if done:
            wakeups.ring(done)

    return on_delivered


def wait_for_deliveries(
    receipt: Receipt,
    handlers: Collection[str],
    timeout: float,
    wakeups: RedisWakeups | str | None = "configured",
    still_pending: Callable[[Iterable[int]], set[int]] | None = None,
) -> bool:
    """Wait, at most `timeout` seconds, until the receipt's deliveries to `handlers` are done.

    Read-your-writes for clients that read a read model straight after a write. Returns False
    on timeout, or when the database fails meanwhile; the write itself has committed either
    way. A ring naming the deliveries is proof; the database is asked at the start only when
    nothing can ring (no Redis), and otherwise only after a slice with no ring.
    """
    if wakeups == "configured":
        wakeups = configured()
    still_pending = still_pending or pending_deliveries
    waiting = {d.id for d in receipt.deliveries if d.handler in handlers}
    deadline = time.monotonic() + timeout
    pause = 0.002
    try:
        if wakeups is None:
            waiting = still_pending(waiting)
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if wakeups is not None:
                try:
                    rung = wakeups.wait(receipt.correlation_id, min(remaining, WAIT_SLICE))
                except RedisError as exc:
                    logger.warning("read-your-writes polls: no wake-ups from Redis (%s)", exc)
                    wakeups = None
                else:
                    if rung:
                        waiting.difference_update(rung)
                        continue
            else:
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 0.05)
            waiting = still_pending(waiting)  # a slice with no ring: ask the database
    except DatabaseError as exc:
        # The write committed before this wait began: its answer is a success, whatever the
        # database does now. The read models catch up once the database is back.
        logger.warning("read-your-writes cut short: the database failed (%s)", exc)
        return False
    return True


def pending_deliveries(ids: Iterable[int]) -> set[int]:
    from allocation.models import Delivery

    ids = list(ids)
    if not ids:
        return set()
    return set(
        Delivery.objects.filter(pk__in=ids, status=Delivery.Status.PENDING).values_list(
            "pk", flat=True
        )
    )
