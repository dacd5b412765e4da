"""Event handlers for the delivery fault tests, subscribed through ALLOCATION_EXTRA_EVENT_HANDLERS.

They run in the real worker. Each acts only on orders whose id has its prefix, and does
nothing for any other order, so that the rest of the stack's traffic flows normally.
"""

from __future__ import annotations

import logging

from django.db import connection

from allocation.domain import events

logger = logging.getLogger(__name__)

SLOW_PREFIX = "slow-"
FAIL_PREFIX = "fail-"
EFFECTS_TABLE = "e2e_effects"


def gate_key(orderid: str) -> int:
    """The advisory lock a test holds to keep `slow_effect` of `orderid` waiting."""
    return sum(map(ord, orderid)) % 2**31


def slow_effect(event: events.Allocated, event_id: str) -> None:
    """A handler with a database effect, which commits with the delivery's done-mark, and
    which waits, inside its transaction, for as long as a test holds its gate (an advisory
    lock): the test decides when it goes on, or kills the worker while it waits."""
    if not event.orderid.startswith(SLOW_PREFIX):
        return
    logger.warning("slow effect started %s", event.orderid)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [gate_key(event.orderid)])
        cursor.execute(
            f"INSERT INTO {EFFECTS_TABLE} (event_id, orderid) VALUES (%s, %s)",
            [event_id, event.orderid],
        )
    logger.warning("slow effect written %s", event.orderid)


def always_fails(event: events.Allocated) -> None:
    if event.orderid.startswith(FAIL_PREFIX):
        raise RuntimeError(f"always_fails refuses {event.orderid}")


def create_effects_table(stack) -> None:
    """The table `slow_effect` writes to (a stack's `after_migrate`). No unique key on
    purpose: an effect applied twice shows as two rows."""
    with stack.connect() as conn:
        conn.execute(
            f"CREATE TABLE {EFFECTS_TABLE} (id bigserial PRIMARY KEY, event_id text NOT NULL,"
            " orderid text NOT NULL, written_at timestamptz NOT NULL DEFAULT now())"
        )
