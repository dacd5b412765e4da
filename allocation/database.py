"""Living with a database that restarts, fails over or runs out of connections.

Every long-running process (gunicorn workers, Celery pool processes, the Redis consumer) keeps
its PostgreSQL connection across units of work. A restart leaves that connection broken, and
Django only notices at the end of a web request (`close_old_connections` on request_finished).
The worker and the consumer call `heal()` around each unit of work for the same effect, so a
broken connection costs one failed unit of work, never every later one.

An unreachable database is an answer in its own right: the APIs give 503 with Retry-After (see
`unavailable()` and `busy()`), and the processes wait for it rather than crash.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable

from django.db import DatabaseError, InterfaceError, OperationalError, connections
from django.db import connection as default_connection

logger = logging.getLogger(__name__)

# lock_timeout and statement_timeout: the database is there, something held it up.
BUSY_SQLSTATES = {"55P03", "57014"}
# Classes of PostgreSQL errors that say the server or the connection is gone, not the query:
# connection exceptions, insufficient resources (too many clients), operator intervention
# (shutting down, restarting), system errors.
UNAVAILABLE_CLASSES = {"08", "53", "57", "58"}


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc.__cause__, "sqlstate", None) or getattr(exc, "sqlstate", None)


def busy(exc: BaseException) -> bool:
    """A statement gave up on a lock or ran out of time (lock_timeout, statement_timeout), or
    SQLite's file was locked for longer than its timeout."""
    if not isinstance(exc, DatabaseError):
        return False
    if sqlstate(exc) in BUSY_SQLSTATES:
        return True
    return isinstance(exc.__cause__, sqlite3.OperationalError) and "locked" in str(exc)


def unavailable(exc: BaseException) -> bool:
    """The database could not be used at all: down, restarting, refusing connections (too many
    clients, shutting down), or a connection that broke under us. Not a bad query: SQLite
    reports those as OperationalError too."""
    if not isinstance(exc, (OperationalError, InterfaceError)) or busy(exc):
        return False
    if isinstance(exc.__cause__, sqlite3.Error):
        return False
    state = sqlstate(exc)
    return state is None or state[:2] in UNAVAILABLE_CLASSES


def heal() -> None:
    """Drop every connection of this thread that failed or outlived CONN_MAX_AGE; the next
    query opens a new one (checked first when CONN_HEALTH_CHECKS is on).

    A connection inside an atomic block is left alone: closing it would end a transaction
    someone still holds (a test's, typically).
    """
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close_if_unusable_or_obsolete()


def reachable() -> bool:
    """Whether a query gets through now (on a fresh connection if the old one broke)."""
    heal()
    try:
        default_connection.ensure_connection()
        with default_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except (OperationalError, InterfaceError):
        default_connection.close()
        return False


def wait_until_reachable(
    timeout: float | None,
    on_wait: Callable[[float], None] | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> bool:
    """Wait, with growing pauses (at most 2 s), until the database answers; False on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.1
    while not reachable():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if on_wait is not None:
            on_wait(pause)
        sleep(pause)
        pause = min(pause * 2, 2.0)
    return True


class DatabaseUnavailableMiddleware:
    """Pages outside the APIs (the admin, /metrics) answer 503 when the database is busy or
    unreachable, rather than 500; the APIs give the same answer in their own error shapes."""

    def __init__(self, get_response: Callable):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception: Exception):
        from django.http import HttpResponse

        if not (busy(exception) or unavailable(exception)):
            return None
        logger.warning("%s %s: database trouble: %s", request.method, request.path, exception)
        retry_after = 1 if busy(exception) else 2
        response = HttpResponse(
            "The database is busy or unavailable; try again shortly.\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = str(retry_after)
        return response


# Set in Celery worker processes (config/celery.py): their transactions change only what the
# outbox can derive again, except a command's, which asks for a synchronous commit itself.
derived_writes_only = False


def commit_without_waiting_for_the_disk() -> None:
    """Make this process's connections commit asynchronously (docs/architecture.md,
    "Durability"): its transactions return before their WAL reaches the disk."""
    from django.db.backends.signals import connection_created

    global derived_writes_only
    derived_writes_only = True
    connection_created.connect(_asynchronous_commit, weak=False)


def _asynchronous_commit(sender=None, connection=None, **kwargs) -> None:
    if connection is not None and connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit TO off")


def limit_web_statements(sender=None, connection=None, **kwargs) -> None:
    """`connection_created` receiver of the web processes: no request waits for a lock longer
    than ALLOCATION_WEB_LOCK_TIMEOUT or runs a statement longer than
    ALLOCATION_WEB_STATEMENT_TIMEOUT (seconds; 0 turns either off). Once per connection, and
    connections are kept, so a request pays nothing for it. The request then answers 503."""
    from django.conf import settings

    if connection is None or connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('lock_timeout', %s, false),"
            " set_config('statement_timeout', %s, false)",
            [
                f"{int(settings.ALLOCATION_WEB_LOCK_TIMEOUT * 1000)}ms",
                f"{int(settings.ALLOCATION_WEB_STATEMENT_TIMEOUT * 1000)}ms",
            ],
        )
