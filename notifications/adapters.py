"""Adapters to the outside world: email, Redis pub/sub, and the Redis stream of all events."""

from __future__ import annotations

import contextlib
import json
import logging
import smtplib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import redis
from django.core.mail import EmailMessage

from notifications.models import Notification

logger = logging.getLogger(__name__)


def is_permanent(error: Exception) -> bool:
    """An SMTP refusal that a retry cannot fix (5xx); connection trouble and 4xx are transient."""
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        return all(code >= 500 for code, _ in error.recipients.values())
    if isinstance(error, smtplib.SMTPResponseException):
        return error.smtp_code >= 500
    return False


class EmailNotifications:
    """Sends mail through Django's mail framework (console, SMTP, ... as settings say).

    One mail per (event, kind): a notification already sent for the event is not sent again,
    and each send is recorded. Transient errors raise, so the delivery is retried with backoff;
    a permanent refusal is recorded as failed and not retried. The record commits with the
    delivery, so a crash between the send and the commit may send twice, with the same
    Message-ID for the receiving side to drop.
    """

    def __init__(self, recipients: Sequence[str]):
        self.recipients = list(recipients)

    def send(self, subject: str, body: str, dedup_key: str, kind: str = "email") -> None:
        if Notification.objects.filter(event_id=dedup_key, kind=kind).exists():
            logger.info("%s for event %s was already sent", kind, dedup_key)
            return
        message = EmailMessage(
            subject,
            body,
            to=self.recipients,
            headers={"Message-ID": f"<{dedup_key}@allocation>", "X-Event-ID": dedup_key},
        )
        status, error = Notification.Status.SENT, ""
        try:
            message.send(fail_silently=False)
        except Exception as exc:
            if not is_permanent(exc):
                raise
            logger.error("%s for event %s refused for good: %s", kind, dedup_key, exc)
            status, error = Notification.Status.FAILED, f"{type(exc).__name__}: {exc}"
        Notification.objects.create(
            event_id=dedup_key,
            kind=kind,
            recipients=self.recipients,
            subject=subject,
            body=body,
            status=status,
            error=error,
        )


class RedisChannels:
    """Redis pub/sub and the stream of all events, on one connection.

    `publish(channel, message)` (callable) publishes a JSON message; `append(...)` adds an event
    to the stream that integrators read with consumer groups. Unlike pub/sub, a stream keeps its
    entries, so a reader that was offline catches up; it is trimmed (approximately) to `maxlen`
    entries. Entries are at-least-once: a reader drops a repeated `event_id`.

    Inside `pipelined()` the calls are queued and sent together, in one round trip, when the
    block exits without an error.
    """

    def __init__(self, url: str, stream: str, maxlen: int):
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.stream, self.maxlen = stream, maxlen
        self._pipeline: ContextVar[Any] = ContextVar(f"pipeline-{id(self)}", default=None)

    def __call__(self, channel: str, message: dict[str, Any]) -> None:
        self._target().publish(channel, json.dumps(message))

    def append(self, event_id: str, type_name: str, payload: dict[str, Any]) -> None:
        self._target().xadd(
            self.stream,
            {"event_id": event_id, "type": type_name, "payload": json.dumps(payload)},
            maxlen=self.maxlen,
            approximate=True,
        )

    @contextlib.contextmanager
    def pipelined(self) -> Iterator[None]:
        pipe = self.client.pipeline(transaction=False)
        token = self._pipeline.set(pipe)
        try:
            yield
        finally:
            self._pipeline.reset(token)
        if len(pipe):
            pipe.execute()

    def _target(self) -> Any:
        return self._pipeline.get() or self.client


class LogPublisher:
    """Stands in for Redis when no REDIS_URL is configured (the embedded default)."""

    pipelined = staticmethod(contextlib.nullcontext)

    def __call__(self, channel: str, message: dict[str, Any]) -> None:
        logger.info("publish %s %s", channel, json.dumps(message))

    def append(self, event_id: str, type_name: str, payload: dict[str, Any]) -> None:
        logger.info("stream %s %s %s", type_name, event_id, json.dumps(payload))
