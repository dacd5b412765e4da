"""Wake-ups for read-your-writes, so a waiting web process does not poll the database.

When a worker commits read-model projections, it rings each of their correlation ids: an entry
on a short-lived Redis list. A web process waiting for its command's projections blocks on that
list (BLPOP) and checks the deliveries in the database when woken. The database stays the
judge: a ring only says "look again", and a lost ring costs at most one wait slice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import cache

import redis
from django.conf import settings

logger = logging.getLogger(__name__)

KEY = "allocation:ryw:{}"
RING_TTL = 60  # seconds a ring waits for a reader; nobody may be waiting at all


class RedisWakeups:
    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5)

    def ring(self, correlation_ids: Iterable[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for correlation_id in set(correlation_ids):
            key = KEY.format(correlation_id)
            pipe.rpush(key, 1)
            pipe.expire(key, RING_TTL)
        pipe.execute()

    def wait(self, correlation_id: str, timeout: float) -> None:
        """Return on a ring of `correlation_id` (perhaps one rung before the call), or after
        `timeout` seconds (at most 4: the client's socket timeout is 5)."""
        self.client.blpop([KEY.format(correlation_id)], timeout=min(timeout, 4.0))


@cache
def configured() -> RedisWakeups | None:
    """This process's wake-ups from settings; None without Redis (eager tasks: nothing waits)."""
    return RedisWakeups(settings.REDIS_URL) if settings.REDIS_URL else None


def ring_read_models(wakeups: RedisWakeups, read_model_handlers: frozenset[str]):
    """The bus's `on_delivered`: ring the chains whose projections just committed."""

    def on_delivered(deliveries) -> None:
        rung = {d.correlation_id for d in deliveries if d.handler in read_model_handlers}
        if rung:
            wakeups.ring(rung)

    return on_delivered
