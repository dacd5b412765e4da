"""Redis in and out: `line_allocated` published, `change_batch_quantity` consumed."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta

import pytest

from tests.e2e.harness import (
    BIN,
    CHANGE_BATCH_QUANTITY,
    E2E_TIMEOUT,
    Api,
    PrivateRedis,
    Process,
    publish,
    wait_until,
)

pytestmark = pytest.mark.e2e

REALLOCATION_TIMEOUT = E2E_TIMEOUT
LINE_ALLOCATED_FIELDS = ("orderid", "sku", "qty", "batchref")


def contract_fields(message: dict) -> dict:
    """The fields the book's contract promises; extra fields (a dedup key, say) are allowed."""
    return {k: message.get(k) for k in LINE_ALLOCATED_FIELDS}


@dataclass(frozen=True)
class OrderOnBatchA:
    """One order of 10 on warehouse batch A (10), with batch B (10, a shipment) to fall back on."""

    sku: str
    a: str
    b: str
    order: str


def order_on_batch_a(api: Api, unique) -> OrderOnBatchA:
    setup = OrderOnBatchA(unique("sku"), unique("batch-a"), unique("batch-b"), unique("order"))
    assert api.add_batch(setup.a, setup.sku, 10, eta=None).status == 201
    assert api.add_batch(setup.b, setup.sku, 10, eta=date.today() + timedelta(days=7)).status == 201
    assert api.allocate(setup.order, setup.sku, 10).status == 202
    assert api.batchref_of(setup.order) == setup.a
    return setup


def wait_for_reallocation(api: Api, orderid: str, batchref: str) -> None:
    wait_until(
        lambda: api.batchref_of(orderid) == batchref,
        REALLOCATION_TIMEOUT,
        f"order {orderid} to be reallocated to {batchref}",
        pause=0.1,
    )


def test_every_allocation_is_published_on_line_allocated(api, unique, line_allocated):
    sku, batch, order = unique("sku"), unique("batch"), unique("order")
    assert api.add_batch(batch, sku, 10).status == 201

    assert api.allocate(order, sku, 4).status == 202

    message = line_allocated.wait_for(orderid=order)
    assert contract_fields(message) == {"orderid": order, "sku": sku, "qty": 4, "batchref": batch}


def test_a_smaller_batch_reallocates_its_lines(api, unique, redis_client, line_allocated):
    setup = order_on_batch_a(api, unique)

    publish(redis_client, CHANGE_BATCH_QUANTITY, {"batchref": setup.a, "qty": 5})

    wait_for_reallocation(api, setup.order, setup.b)
    message = line_allocated.wait_for(orderid=setup.order, batchref=setup.b)
    assert contract_fields(message) == {
        "orderid": setup.order,
        "sku": setup.sku,
        "qty": 10,
        "batchref": setup.b,
    }
    # Publishing is at-least-once: a repeat is allowed, another batch or another order is not.
    published = {m["batchref"] for m in line_allocated.matching(orderid=setup.order)}
    assert published == {setup.a, setup.b}


def test_the_consumer_skips_bad_messages_and_keeps_going(stack, api, unique, redis_client):
    setup = order_on_batch_a(api, unique)
    m = [f"bad{n}-{uuid.uuid4().hex}" for n in range(11)]  # one marker per bad message
    bad_messages = [
        f"{{not json {m[0]}".encode(),
        b"\xff\xfe invalid utf-8 " + m[1].encode(),
        [m[2], 5],
        {"batchref": setup.a, "note": m[3]},  # no qty
        {"qty": 5, "note": m[4]},  # no batchref
        {"batchref": setup.a, "qty": "5", "note": m[5]},
        {"batchref": setup.a, "qty": 1.5, "note": m[6]},
        {"batchref": setup.a, "qty": True, "note": m[7]},
        {"batchref": setup.a, "qty": -1, "note": m[8]},
        {"batchref": f"no-such-batch-{m[9]}", "qty": 5},
        f'{{"batchref": "{m[10]}", "qty": 5, "pad": "{"x" * 1024 * 1024}"}}',
    ]
    log_start = len(stack.consumer.log())

    for message in bad_messages:
        publish(redis_client, CHANGE_BATCH_QUANTITY, message)
    publish(redis_client, CHANGE_BATCH_QUANTITY, {"batchref": setup.a, "qty": 5})

    wait_for_reallocation(api, setup.order, setup.b)
    assert stack.consumer.alive()
    skipped = [
        line
        for line in stack.consumer.log()[log_start:].splitlines()
        if "skipped message on change_batch_quantity" in line
    ]
    unnamed = [marker for marker in m if not any(marker in line for line in skipped)]
    assert unnamed == [], f"bad messages not logged as skipped: {unnamed}\n" + "\n".join(skipped)


@pytest.fixture
def private_redis(stack) -> Iterator[PrivateRedis]:
    private = PrivateRedis()
    yield private
    private.close()


def test_the_consumer_reconnects_when_redis_restarts(stack, api, unique, private_redis):
    server = private_redis.start()
    argv = [str(BIN / "python"), "manage.py", "consume_external_events"]
    consumer = Process("private-consumer", [*argv, "--redis-url", private_redis.url]).start()
    try:
        consumer.wait_for_log(r"listening on change_batch_quantity", E2E_TIMEOUT)
        setup = order_on_batch_a(api, unique)

        server.stop(signal.SIGKILL)
        consumer.wait_for_log(r"Redis connection lost", E2E_TIMEOUT)
        private_redis.start()

        wait_until(
            lambda: private_redis.subscribers(CHANGE_BATCH_QUANTITY) >= 1,
            E2E_TIMEOUT,
            "the consumer to subscribe again to the restarted redis-server",
            pause=0.1,
        )
        receivers = publish(
            private_redis.client, CHANGE_BATCH_QUANTITY, {"batchref": setup.a, "qty": 5}
        )

        assert receivers == 1
        wait_for_reallocation(api, setup.order, setup.b)
        assert consumer.alive()
        assert consumer.log().count("listening on change_batch_quantity") >= 2
    finally:
        consumer.stop()
