"""SIGTERM during load: the worker and the consumer finish (or leave for the sweeper) what
they hold, and nothing is lost. Real processes on PostgreSQL and a private Redis."""

from __future__ import annotations

import json
import signal
import threading
import uuid

import pytest

from tests.e2e.harness import (
    CHANGE_BATCH_QUANTITY,
    PrivateRedis,
    StackConfig,
    publish,
    running_stack,
    wait_until,
)

pytestmark = pytest.mark.e2e

SHUTDOWN_ENV = {
    "ALLOCATION_DELIVERY_LEASE": "2",
    "ALLOCATION_SWEEP_INTERVAL": "0.5",
    "ALLOCATION_READ_YOUR_WRITES_TIMEOUT": "0.5",
    "ALLOCATION_WRITE_THROTTLE_RATE": "off",
}


@pytest.fixture(scope="module")
def stack():
    broker = PrivateRedis(name="shutdown-redis")
    broker.start()
    config = StackConfig(
        database="allocation_e2e_shutdown",
        redis_url=broker.url,
        env=SHUTDOWN_ENV,
        processes=("web", "worker", "beat", "consumer"),
        artifacts="e2e-shutdown",
    )
    try:
        with running_stack(config) as running:
            yield running
    finally:
        broker.close()


def pending(stack) -> int:
    with stack.connect() as conn:
        return conn.execute(
            "SELECT count(*) FROM allocation_delivery WHERE status = 'pending'"
        ).fetchone()[0]


def test_sigterm_to_the_worker_under_load_loses_nothing(stack):
    api, sku = stack.api, f"sku-{uuid.uuid4().hex[:8]}"
    assert api.add_batch(f"{sku}-b", sku, 100_000).status == 201
    accepted, stop = [], threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            orderid = f"{sku}-c{n}-{i}"
            if api.allocate(orderid, sku, 1).status == 202:
                accepted.append(orderid)
            i += 1

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in clients:
        t.start()
    try:
        wait_until(lambda: len(accepted) >= 20, 60, "20 allocations before the SIGTERM")
        worker = stack.worker
        worker.popen.send_signal(signal.SIGTERM)  # warm shutdown, while tasks keep arriving
        # Bounded: the tasks in hand (milliseconds each here) plus at most 2 s per pool
        # process (config/celery.py); the limit is only there so that a hang fails the test.
        wait_until(lambda: not worker.alive(), 90, "the worker to finish its warm shutdown")
        assert worker.popen.returncode == 0, worker.logs()
        assert "Warm shutdown" in worker.logs()
        stack.start("worker")
        after_restart = len(accepted)
        wait_until(lambda: len(accepted) >= after_restart + 10, 60, "allocations after restart")
    finally:
        stop.set()
        for t in clients:
            t.join(30)

    assert len(accepted) > 20
    wait_until(lambda: pending(stack) == 0, 60, "every delivery to be done")
    with stack.connect() as conn:
        viewed = {
            row[0]
            for row in conn.execute(
                "SELECT orderid FROM readmodels_orderallocation WHERE sku = %s "
                "AND batchref IS NOT NULL",
                (sku,),
            )
        }
    assert viewed == set(accepted)
    assert stack.manage("check", "check_readmodels", check=False).popen.returncode == 0


def test_sigterm_to_the_consumer_mid_stream_leaves_no_message_half_handled(stack):
    api, run = stack.api, uuid.uuid4().hex[:8]
    refs = [f"b-{run}-{i}" for i in range(30)]
    for ref in refs:
        assert api.add_batch(ref, f"sku-{run}", 10).status == 201
    client = stack.redis_client()
    consumer = stack.consumer
    try:
        for i, ref in enumerate(refs):
            publish(client, CHANGE_BATCH_QUANTITY, json.dumps({"batchref": ref, "qty": 7}))
            if i == 10:
                # Mid-stream: once it has handled one, with the rest on their way.
                consumer.wait_for_log(rf"ChangeBatchQuantity\(ref='{refs[0]}'", 60, "both")
                consumer.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: not consumer.alive(), 60, "the consumer to stop")
        assert consumer.popen.returncode == 0, consumer.logs()
    finally:
        client.close()

    assert "Stopped." in consumer.log("stdout")
    with stack.connect() as conn:
        changed = {
            ref
            for (ref,) in conn.execute(
                "SELECT reference FROM allocation_batch WHERE reference = ANY(%s) "
                "AND purchased_quantity = 7",
                (refs,),
            )
        }
    handled = {ref for ref in refs if f"ChangeBatchQuantity(ref='{ref}'" in consumer.logs()}
    # What it said it handled is exactly what changed: nothing half done, nothing claimed
    # that did not commit. (Messages published after it stopped are gone: Redis pub/sub
    # keeps nothing for a subscriber that is not there.)
    assert changed == handled
    assert len(changed) >= 1
    stack.start("consumer")
