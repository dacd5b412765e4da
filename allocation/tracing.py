"""The ids that tie a chain together (command -> events -> follow-up commands), for the logs.

The bus sets them for the duration of a command or a delivery; `TraceFilter` copies them onto
every log record, so a log line can be matched with its rows in the event log.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar

_trace: ContextVar[dict[str, str] | None] = ContextVar("trace", default=None)

FIELDS = ("correlation_id", "causation_id", "handling")


@contextlib.contextmanager
def traced(**ids: str) -> Iterator[None]:
    token = _trace.set({**(_trace.get() or {}), **ids})
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
