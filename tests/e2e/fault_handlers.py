"""Event handlers for the delivery fault tests, subscribed through ALLOCATION_EXTRA_EVENT_HANDLERS.

They run in the real worker. Each acts only on orders whose id has its prefix, and does
nothing for any other order, so that the rest of the stack's traffic flows normally.
"""

from __future__ import annotations

import logging
import time

from django.db import connection

from allocation.domain import events

logger = logging.getLogger(__name__)

SLOW_PREFIX = "slow-"
FAIL_PREFIX = "fail-"
SLOW_SECONDS = 3.0
EFFECTS_TABLE = "e2e_effects"


def slow_effect(event: events.Allocated, event_id: str) -> None:
    """A slow handler with a database effect: it commits with the delivery's done-mark."""
    if not event.orderid.startswith(SLOW_PREFIX):
        return
    logger.warning("slow effect started %s", event.orderid)
    time.sleep(SLOW_SECONDS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {EFFECTS_TABLE} (event_id, orderid) VALUES (%s, %s)",
            [event_id, event.orderid],
        )
    logger.warning("slow effect written %s", event.orderid)


def always_fails(event: events.Allocated) -> None:
    if event.orderid.startswith(FAIL_PREFIX):
        raise RuntimeError(f"always_fails refuses {event.orderid}")
