"""Adapters to the outside world: email, and Redis pub/sub for integration events."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import redis
from django.core.mail import EmailMessage

logger = logging.getLogger(__name__)


class EmailNotifications:
    """Sends mail through Django's mail framework (console, SMTP, ... as settings say)."""

    def __init__(self, recipients: Sequence[str]):
        self.recipients = list(recipients)

    def send(self, subject: str, body: str, dedup_key: str) -> None:
        """Send one mail; a resend of the same `dedup_key` carries the same Message-ID."""
        EmailMessage(
            subject,
            body,
            to=self.recipients,
            headers={"Message-ID": f"<{dedup_key}@allocation>", "X-Event-ID": dedup_key},
        ).send(fail_silently=False)


class RedisPublisher:
    """Publishes a JSON message on a Redis pub/sub channel."""

    def __init__(self, url: str):
        self.client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)

    def __call__(self, channel: str, message: dict[str, Any]) -> None:
        self.client.publish(channel, json.dumps(message))


class LogPublisher:
    """Stands in for Redis when no REDIS_URL is configured (the embedded default)."""

    def __call__(self, channel: str, message: dict[str, Any]) -> None:
        logger.info("publish %s %s", channel, json.dumps(message))
