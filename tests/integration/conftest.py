import json
import threading
import time

import pytest
import redis
from django.conf import settings
from django.db import connection

from allocation.consumer import consume


@pytest.fixture(autouse=True, scope="session")
def _require_postgresql(django_db_setup, django_db_blocker):
    """These tests are about PostgreSQL's locks and constraints; SQLite would prove nothing."""
    with django_db_blocker.unblock():
        assert connection.vendor == "postgresql", f"need PostgreSQL, got {connection.vendor}"


@pytest.fixture
def bus():
    from allocation.apps import get_bus

    return get_bus()


@pytest.fixture
def runner():
    from allocation.apps import get_runner

    return get_runner()


@pytest.fixture
def redis_client():
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.ping()  # fail, never skip, when Redis is missing
    yield client
    client.close()


@pytest.fixture
def line_allocated(redis_client):
    """Messages published on `line_allocated` from now on, read with `drain()`.

    Pub/sub channels are server-wide, so other processes on the same Redis may publish too:
    only messages about events in this test's database are kept.
    """
    from allocation.models import StoredEvent

    pubsub = redis_client.pubsub()
    pubsub.subscribe("line_allocated")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"  # subscribed before we act

    def drain():
        messages = []
        while message := pubsub.get_message(timeout=0.5):
            messages.append(json.loads(message["data"]))
        ours = {str(pk) for pk in StoredEvent.objects.values_list("pk", flat=True)}
        return [m for m in messages if m.get("event_id") in ours]

    yield drain
    pubsub.close()


@pytest.fixture
def running_consumer(bus):
    """The Redis consumer in a thread of this process, subscribed before the test acts."""
    stop, ready = threading.Event(), threading.Event()

    def run():
        try:
            consume(bus, settings.REDIS_URL, stop, on_ready=ready.set)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "the consumer did not subscribe"
    yield thread
    stop.set()
    thread.join(10)


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False
