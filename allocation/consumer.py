"""The Redis consumer of external events: `change_batch_quantity` in, commands to the bus.

Bad input is logged with a reason and skipped; a lost connection is retried with backoff.
Redis pub/sub delivers at most once: a message published while no consumer listens is gone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from allocation import database
from allocation.domain import commands
from allocation.domain.model import DomainError

logger = logging.getLogger(__name__)

CHANGE_BATCH_QUANTITY = "change_batch_quantity"
MAX_MESSAGE_BYTES = 64 * 1024
# What the database can hold: PostgreSQL integer quantities, and text without NUL or lone
# surrogates. Anything else would fail in the database instead of being skipped with a reason.
MAX_QTY = 2**31 - 1
# How long a message waits for an unreachable database before it is given up (and logged).
DATABASE_RETRY_SECONDS = 60.0


class BadMessage(ValueError):
    """An incoming message that cannot become a command."""


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if type(value) is not kind:
        raise BadMessage(f"field {name!r} must be {kind.__name__}, got {value!r:.80}")
    return value


def parse_change_batch_quantity(raw: bytes | str) -> commands.ChangeBatchQuantity:
    """`{"batchref": str, "qty": int}` -> ChangeBatchQuantity, or BadMessage saying why."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"message of {len(raw)} bytes is over {MAX_MESSAGE_BYTES}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: nesting deeper than the parser's recursion limit.
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadMessage(f"expected a JSON object, got {type(data).__name__}")
    ref, qty = _field(data, "batchref", str), _field(data, "qty", int)
    if "\x00" in ref or not _encodable(ref):
        raise BadMessage(f"field 'batchref' holds characters no batch reference has: {ref!r:.80}")
    if qty > MAX_QTY:
        raise BadMessage(f"field 'qty' must be at most {MAX_QTY}, got {qty!r:.24}")
    return commands.ChangeBatchQuantity(ref=ref, qty=qty)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a "\\ud800" escape
        return False
    return True


PARSERS: dict[str, Callable[[bytes | str], commands.Command]] = {
    CHANGE_BATCH_QUANTITY: parse_change_batch_quantity,
}


def handle_message(
    bus: Any, channel: str, raw: bytes | str, stop: threading.Event | None = None
) -> bool:
    """Turn one message into a command and handle it. Never raises; False when skipped.

    While the database is unreachable the message is held and tried again, for at most
    DATABASE_RETRY_SECONDS (or until `stop` is set): pub/sub would not give it a second time.
    """
    try:
        command = PARSERS[channel](raw)
        _handle_despite_the_database(bus, command, stop or threading.Event())
    except (BadMessage, DomainError) as exc:
        logger.warning("skipped message on %s: %s (%r)", channel, exc, raw[:200])
        return False
    except Exception:
        logger.exception("failed to handle message on %s (%r)", channel, raw[:200])
        return False
    logger.info("handled %s from %s", command, channel)
    return True


def _handle_despite_the_database(
    bus: Any, command: commands.Command, stop: threading.Event
) -> None:
    deadline = time.monotonic() + DATABASE_RETRY_SECONDS
    pause = 0.25
    while True:
        database.heal()  # a connection broken since the last message is replaced first
        try:
            bus.handle(command)
            return
        except Exception as exc:
            if not (database.unavailable(exc) or database.busy(exc)):
                raise
            if stop.is_set() or time.monotonic() + pause > deadline:
                raise
            logger.warning("database unavailable (%s); %s again in %.2fs", exc, command, pause)
        stop.wait(pause)
        pause = min(pause * 2, 5.0)


def consume(
    bus: Any,
    redis_url: str,
    stop: threading.Event,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Listen until `stop` is set, reconnecting with backoff whenever Redis goes away."""
    pause = 0.5
    while not stop.is_set():
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, health_check_interval=10)
        try:
            with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                pubsub.subscribe(*PARSERS)
                logger.info("listening on %s", ", ".join(PARSERS))
                if on_ready:
                    on_ready()
                pause = 0.5
                while not stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message and message["type"] == "message":
                        handle_message(bus, message["channel"].decode(), message["data"], stop)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            logger.warning("Redis connection lost (%s); reconnecting in %.1fs", exc, pause)
            stop.wait(pause)
            pause = min(pause * 2, 10.0)
        finally:
            client.close()
