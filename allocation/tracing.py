"""The ids that tie a chain together (command -> events -> follow-up commands), for the logs.

The bus sets them for the duration of a command or a delivery; `TraceFilter` copies them onto
every log record, so a log line can be matched with its rows in the event log. `JsonFormatter`
writes one JSON object per line, for log shippers (DJANGO_LOG_FORMAT=json).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar

_trace: ContextVar[dict[str, str] | None] = ContextVar("trace", default=None)

FIELDS = ("correlation_id", "causation_id", "handling", "sku")


@contextlib.contextmanager
def traced(**ids: str | None) -> Iterator[None]:
    token = _trace.set({**(_trace.get() or {}), **{k: v for k, v in ids.items() if v}})
    try:
        yield
    finally:
        _trace.reset(token)


class TraceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        current = _trace.get() or {}
        for field in FIELDS:
            setattr(record, field, current.get(field, "-"))
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **{field: getattr(record, field, "-") for field in FIELDS},
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
