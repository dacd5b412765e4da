"""Wake-ups on PostgreSQL and Redis: the doorbell that saves broker messages, and the ring that
ends a read-your-writes wait without asking the database.

No test here measures time: each waits for what it checks, with a slice or timeout far longer
than the test needs, and tells the ring from the database by the queries the wait made.
"""

import threading

import pytest
from django.conf import settings
from django.db import connections
from django.test.utils import CaptureQueriesContext

from allocation import wakeups
from allocation.bootstrap import READ_MODEL_HANDLERS, bootstrap
from allocation.domain import commands
from allocation.models import Delivery
from allocation.unit_of_work import Receipt
from allocation.wakeups import DOORBELL, RING, RedisWakeups, wait_for_deliveries

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_wakeups(redis_client):
    return RedisWakeups(settings.REDIS_URL)


@pytest.fixture
def held(redis_wakeups):
    """A bus whose commits wake nobody, and whose runner rings through Redis: call it with a
    correlation id to allocate under it; it returns the commit's receipt."""
    wiring = bootstrap(
        wake=[].extend, on_delivered=wakeups.ring_read_models(redis_wakeups, READ_MODEL_HANDLERS)
    )
    wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))
    wiring.runner.run_due()

    def allocate(correlation_id: str, orderid: str = "o1") -> Receipt:
        receipt = Receipt(correlation_id)
        command = commands.Allocate(orderid, "LAMP", 1)
        wiring.bus.handle(command, correlation_id=correlation_id, receipt=receipt)
        return receipt

    allocate.runner = wiring.runner
    return allocate


def in_thread(action) -> threading.Thread:
    def run():
        try:
            action()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def delivery_queries(context: CaptureQueriesContext) -> int:
    return sum('"allocation_delivery"' in q["sql"] for q in context.captured_queries)


def projection_of(receipt: Receipt) -> list[int]:
    return [d.id for d in receipt.deliveries if d.handler in READ_MODEL_HANDLERS]


# --- the ring ------------------------------------------------------------------------------------


def test_the_worker_rings_the_ids_of_the_projections_it_committed(held, redis_client):
    redis_client.delete(RING.format("cid-ring"))
    receipt = held("cid-ring")

    held.runner.run_due()

    rung = redis_client.lrange(RING.format("cid-ring"), 0, -1)
    assert rung == [str(projection_of(receipt)[0]).encode()]  # one ring per commit, by id
    assert 0 < redis_client.ttl(RING.format("cid-ring")) <= 60


def test_a_ring_ends_the_wait_without_a_question_to_the_database(
    held, redis_client, redis_wakeups, monkeypatch
):
    monkeypatch.setattr(wakeups, "WAIT_SLICE", 30.0)  # only a ring can end the wait early
    redis_client.delete(RING.format("cid-wake"))
    receipt = held("cid-wake")
    worker = in_thread(held.runner.run_due)  # before or during the wait: either is fine

    with CaptureQueriesContext(connections["default"]) as queries:
        assert wait_for_deliveries(receipt, READ_MODEL_HANDLERS, 60, wakeups=redis_wakeups)
    worker.join(60)

    assert delivery_queries(queries) == 0  # the ring is proof
    assert not Delivery.objects.filter(pk__in=projection_of(receipt), status="pending").exists()


def test_a_ring_for_other_deliveries_of_the_same_chain_does_not_end_the_wait(
    held, redis_client, redis_wakeups, monkeypatch
):
    monkeypatch.setattr(wakeups, "WAIT_SLICE", 0.2)
    redis_client.delete(RING.format("cid-shared"))
    receipt = held("cid-shared")
    redis_wakeups.ring({"cid-shared": [10**9]})  # an older request that used the same id

    assert not wait_for_deliveries(receipt, READ_MODEL_HANDLERS, 0.5, wakeups=redis_wakeups)


def test_without_a_ring_the_wait_asks_the_database_after_a_slice(held, redis_wakeups, monkeypatch):
    monkeypatch.setattr(wakeups, "WAIT_SLICE", 0.2)
    receipt = held("cid-silent")
    # Done behind the wait's back, with no ring (a worker that died between commit and ring).
    Delivery.objects.filter(pk__in=projection_of(receipt)).update(status="done")

    with CaptureQueriesContext(connections["default"]) as queries:
        assert wait_for_deliveries(receipt, READ_MODEL_HANDLERS, 60, wakeups=redis_wakeups)

    assert delivery_queries(queries) == 1


def test_with_redis_gone_the_wait_falls_back_to_polling(held):
    receipt = held("cid-no-redis")
    unreachable = RedisWakeups("redis://127.0.0.1:1/0")  # nothing listens on port 1
    worker = in_thread(held.runner.run_due)

    assert wait_for_deliveries(receipt, READ_MODEL_HANDLERS, 60, wakeups=unreachable)
    worker.join(60)


def test_without_redis_a_wait_with_nothing_left_asks_once_and_never_blocks(held):
    receipt = held("cid-done")
    held.runner.run_due()

    with CaptureQueriesContext(connections["default"]) as queries:
        assert wait_for_deliveries(receipt, READ_MODEL_HANDLERS, 60, wakeups=None)
    assert delivery_queries(queries) == 1


def test_the_wait_still_times_out(held, redis_wakeups):
    receipt = held("cid-never")
    assert not wait_for_deliveries(receipt, READ_MODEL_HANDLERS, 0.5, wakeups=redis_wakeups)


# --- the doorbell --------------------------------------------------------------------------------


def test_the_doorbell_sends_one_step_for_a_burst_of_commits(redis_client, redis_wakeups):
    redis_client.delete(DOORBELL)
    sent = []

    for _ in range(5):
        redis_wakeups.ring_doorbell(lambda: sent.append("step"))

    assert sent == ["step"]
    assert 0 < redis_client.ttl(DOORBELL) <= max(1, round(settings.ALLOCATION_SWEEP_INTERVAL))


def test_a_step_answers_the_doorbell_before_it_looks_so_the_next_commit_rings_again(
    redis_client, redis_wakeups
):
    redis_client.delete(DOORBELL)
    sent = []
    redis_wakeups.ring_doorbell(lambda: sent.append(1))

    redis_wakeups.answer_doorbell()  # what a step does first
    redis_wakeups.ring_doorbell(lambda: sent.append(2))

    assert sent == [1, 2]


def test_a_step_that_could_not_be_sent_leaves_the_doorbell_for_the_next_commit(
    redis_client, redis_wakeups
):
    redis_client.delete(DOORBELL)

    def broker_down():
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        redis_wakeups.ring_doorbell(broker_down)
    sent = []
    redis_wakeups.ring_doorbell(lambda: sent.append("step"))

    assert sent == ["step"]


def test_with_redis_gone_the_doorbell_sends_a_step_every_time():
    unreachable = RedisWakeups("redis://127.0.0.1:1/0")
    sent = []

    unreachable.ring_doorbell(lambda: sent.append("step"))
    unreachable.ring_doorbell(lambda: sent.append("step"))

    assert sent == ["step", "step"]


def test_a_quiet_worker_lets_each_commit_ring_and_a_busy_one_holds_the_doorbell(
    redis_client, redis_wakeups, monkeypatch
):
    """The protocol end to end. A step that finds one request's work answers the doorbell and
    stops: the next commit rings for itself. A step that finds several requests' work holds
    the doorbell and steps on: a commit then sends no message, and is delivered all the same
    before the worker lets go."""
    from allocation import tasks
    from allocation.bootstrap import EVENT_HANDLERS
    from allocation.domain import events

    sent, seen_held = [], []

    def meanwhile(event):
        """Another process commits while the worker works."""
        follow_up = {"b-a": "b-d", "b-d": "b-c"}.get(event.ref)
        if follow_up:
            seen_held.append(bool(redis_client.exists(DOORBELL)))
            command = commands.CreateBatch(follow_up, "DESK", 5, None)
            in_thread(lambda: wiring.bus.handle(command)).join(60)

    routing = {
        k: [*v, meanwhile] if k is events.BatchCreated else v for k, v in EVENT_HANDLERS.items()
    }
    wiring = bootstrap(
        event_handlers=routing,
        wake=lambda deliveries: redis_wakeups.ring_doorbell(lambda: sent.append("step")),
    )
    monkeypatch.setattr(tasks, "get_runner", lambda: wiring.runner)
    monkeypatch.setattr(wakeups, "configured", lambda: redis_wakeups)
    redis_client.delete(DOORBELL)

    # Quiet: one request, one message, one step, and the worker stops.
    wiring.bus.handle(commands.CreateBatch("b-q", "LAMP", 5, None))
    assert sent == ["step"]
    assert tasks.deliver_task.apply().result > 0
    assert redis_client.get(DOORBELL) is None
    wiring.bus.handle(commands.CreateBatch("b-q2", "LAMP", 5, None))
    assert sent == ["step", "step"]  # rang for itself
    tasks.deliver_task.apply()

    # Busy: two requests before the worker looks; it holds the doorbell and steps on.
    sent.clear()
    wiring.bus.handle(commands.CreateBatch("b-a", "LAMP", 5, None))
    wiring.bus.handle(commands.CreateBatch("b-b", "LAMP", 5, None))  # found it set: no message
    assert sent == ["step"]
    tasks.deliver_task.apply()

    # b-d was committed in the first step (not yet held: it rang), b-c in a later one (held).
    assert seen_held == [False, True]
    assert sent == ["step", "step"]  # b-c sent nothing...
    assert not Delivery.objects.filter(status="pending").exists()  # ...and was delivered
    assert redis_client.get(DOORBELL) is None  # let go: the next commit rings again
