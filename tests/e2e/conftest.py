"""Fixtures of the end-to-end tests; the machinery itself lives in tests/e2e/harness.py.

One stack, shared by the whole tests/e2e package, runs gunicorn, a Celery worker (prefork, on
a Redis broker) and the external event consumer against a fresh `allocation_e2e` database;
the tests drive it over HTTP and Redis as a client would. Every child writes its stdout and
stderr under tests/artifacts/e2e/ (a module with a stack of its own uses another subfolder),
and a failing test shows the tail of those logs. Missing PostgreSQL or Redis fails the run; it
never skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from tests.e2e.harness import (
    LINE_ALLOCATED,
    RUNNING,
    Api,
    Stack,
    StackConfig,
    Subscription,
    logs_report,
    running_stack,
)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and RUNNING:
        report.sections.append(("e2e process logs (tails)", logs_report()))


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    # Package scope: one stack for all of tests/e2e, stopped after its last test, so that its
    # consumer and worker are not still listening while the other layers run in the session.
    # A write waits for its projections (the ring ends the wait as soon as they commit), so a
    # test that reads straight after it sees it even on a machine slow enough to need seconds.
    config = StackConfig(env={"ALLOCATION_READ_YOUR_WRITES_TIMEOUT": "30"})
    with running_stack(config) as running:
        yield running


@pytest.fixture
def api(stack: Stack) -> Api:
    return stack.api


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    client = stack.redis_client()
    yield client
    client.close()


@pytest.fixture
def line_allocated(redis_client: redis.Redis) -> Iterator[Subscription]:
    """Subscribed to `line_allocated` before the test acts, so no message is missed."""
    subscription = Subscription(redis_client, LINE_ALLOCATED)
    yield subscription
    subscription.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test uses: the stack and its database are shared by the whole session."""
    run = uuid.uuid4().hex[:10]
    return lambda prefix: f"{prefix}-{run}"
