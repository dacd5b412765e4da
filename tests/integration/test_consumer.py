"""The Redis consumer against real Redis: bad input is logged and skipped, never fatal."""

import json

import pytest

from allocation import models as orm
from allocation.domain import commands
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BAD_MESSAGES = [
    b"{not json",
    b"\xff\xfe\x00",
    b"[1, 2, 3]",
    b'"just a string"',
    b"{}",
    b'{"batchref": "b1"}',
    b'{"qty": 3}',
    b'{"batchref": "b1", "qty": "3"}',
    b'{"batchref": "b1", "qty": 1.5}',
    b'{"batchref": "b1", "qty": true}',
    b'{"batchref": 7, "qty": 3}',
    b'{"batchref": "b1", "qty": -4}',
    b'{"batchref": "b1", "qty": 0}',
    b'{"batchref": "no-such-batch", "qty": 3}',
    json.dumps({"batchref": "b1", "qty": 3, "pad": "x" * 100_000}).encode(),
    json.dumps({"batchref": "ünïcødé-🚚", "qty": 3}).encode(),
]


def test_the_consumer_skips_bad_messages_then_handles_a_good_one(
    bus, redis_client, running_consumer, caplog
):
    bus.handle(commands.CreateBatch("b1", "SHELF", 10, None))

    for raw in BAD_MESSAGES:
        redis_client.publish("change_batch_quantity", raw)
    redis_client.publish("change_batch_quantity", json.dumps({"batchref": "b1", "qty": 4}))

    assert wait_for(lambda: orm.Batch.objects.get(reference="b1").purchased_quantity == 4)
    assert running_consumer.is_alive()
    skipped = [r for r in caplog.records if r.getMessage().startswith("skipped message")]
    assert len(skipped) == len(BAD_MESSAGES)
    assert any("Unknown batch no-such-batch" in r.getMessage() for r in skipped)
    assert any("not JSON" in r.getMessage() for r in skipped)
