"""Read-your-writes on PostgreSQL and Redis: the worker's ring wakes the waiting web process."""

import threading
import time

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from allocation import outbox
from allocation.bootstrap import READ_MODEL_HANDLERS, bootstrap
from allocation.domain import commands
from allocation.models import Delivery
from allocation.outbox import wait_for_deliveries
from allocation.wakeups import KEY, RedisWakeups

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def undelivered():
    """A bus whose commits are not dispatched, and the deliveries it left: call it with a
    correlation id to allocate under it."""
    lost: list[int] = []
    bus = bootstrap(dispatch=lost.extend)
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))
    lost.clear()

    def allocate(correlation_id: str, orderid: str = "o1") -> list[int]:
        bus.handle(commands.Allocate(orderid, "LAMP", 1), correlation_id=correlation_id)
        ids = list(lost)
        lost.clear()
        return ids

    allocate.bus = bus
    return allocate


def later(seconds: float, action) -> threading.Thread:
    def run():
        try:
            time.sleep(seconds)
            action()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def count_polls(context: CaptureQueriesContext) -> int:
    return sum('"allocation_delivery"' in q["sql"] for q in context.captured_queries)


def test_the_worker_rings_the_chain_once_its_projection_commits(undelivered, redis_client):
    ids = undelivered("cid-ring")
    redis_client.delete(KEY.format("cid-ring"))

    undelivered.bus.deliver_all(ids)

    assert redis_client.lrange(KEY.format("cid-ring"), 0, -1) == [b"1"]  # one ring per commit
    assert 0 < redis_client.ttl(KEY.format("cid-ring")) <= 60


def test_a_ring_wakes_the_wait_at_once_and_it_does_not_poll(undelivered, redis_client, monkeypatch):
    monkeypatch.setattr(outbox, "WAKEUP_SLICE", 3.0)  # only the ring can end the wait early
    ids = undelivered("cid-wake")
    redis_client.delete(KEY.format("cid-wake"))
    worker = later(0.15, lambda: undelivered.bus.deliver_all(ids))

    started = time.monotonic()
    with CaptureQueriesContext(connections["default"]) as queries:
        assert wait_for_deliveries("cid-wake", READ_MODEL_HANDLERS, timeout=5)
    took = time.monotonic() - started
    worker.join()

    assert 0.1 < took < 1.0
    # Polling with growing pauses would have asked about 7 times in 0.15 s.
    assert count_polls(queries) == 2  # before blocking, and once woken


def test_without_a_ring_the_wait_looks_again_after_each_slice(undelivered):
    ids = undelivered("cid-silent")
    # Done behind the wait's back, with no ring (a worker that died between commit and ring).
    worker = later(0.1, lambda: Delivery.objects.filter(pk__in=ids).update(status="done"))
    started = time.monotonic()
    assert wait_for_deliveries("cid-silent", READ_MODEL_HANDLERS, timeout=5)
    worker.join()
    assert time.monotonic() - started < 0.6  # one slice (0.25 s), not the whole timeout


def test_with_redis_gone_the_wait_falls_back_to_polling(undelivered):
    ids = undelivered("cid-no-redis")
    unreachable = RedisWakeups("redis://127.0.0.1:1/0")  # nothing listens on port 1

    worker = later(0.2, lambda: Delivery.objects.filter(pk__in=ids).update(status="done"))
    started = time.monotonic()
    assert wait_for_deliveries("cid-no-redis", READ_MODEL_HANDLERS, timeout=5, wakeups=unreachable)
    worker.join()
    assert time.monotonic() - started < 1.0


def test_a_wait_with_nothing_to_wait_for_asks_once_and_never_blocks(undelivered):
    ids = undelivered("cid-done")
    undelivered.bus.deliver_all(ids)

    started = time.monotonic()
    with CaptureQueriesContext(connections["default"]) as queries:
        assert wait_for_deliveries("cid-done", READ_MODEL_HANDLERS, timeout=5)
    assert time.monotonic() - started < 0.1
    assert count_polls(queries) == 1


def test_the_wait_still_times_out(undelivered):
    undelivered("cid-never")
    started = time.monotonic()
    assert not wait_for_deliveries("cid-never", READ_MODEL_HANDLERS, timeout=0.5)
    assert 0.5 <= time.monotonic() - started < 1.0
