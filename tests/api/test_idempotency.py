"""`Idempotency-Key` on v1 POSTs: replays answer the first response and run nothing."""

import threading

import pytest
from django.contrib.auth.models import User
from django.db import connections
from rest_framework.test import APIClient

from allocation import models as orm
from allocation.apps import get_bus
from allocation.unit_of_work import TransactionConflict
from tests.api.conftest import error_code

pytestmark = pytest.mark.django_db(transaction=True)


def post(client, path, body, key):
    return client.post(path, body, HTTP_IDEMPOTENCY_KEY=key)


def test_a_replay_answers_the_first_response_without_running_the_command(allocator, batch):
    batch("b1", "LAMP", 2)
    line = {"orderid": "o1", "sku": "LAMP", "qty": 3}
    first = post(allocator, "/api/v1/allocations", line, "key-1")
    assert first.status_code == 409 and error_code(first) == "out_of_stock"

    batch("b2", "LAMP", 10)  # running the command again would now allocate
    replay = post(allocator, "/api/v1/allocations", line, "key-1")

    assert (replay.status_code, replay.json()) == (first.status_code, first.json())
    assert replay["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first
    assert orm.StoredEvent.objects.filter(type="OutOfStock").count() == 1
    assert not orm.Allocation.objects.exists()


def test_a_replayed_creation_is_the_same_201(allocator):
    body = {"ref": "b1", "sku": "LAMP", "qty": 5, "eta": "2030-01-01"}
    first = post(allocator, "/api/v1/batches", body, "create-b1")
    replay = post(allocator, "/api/v1/batches", body, "create-b1")
    assert first.status_code == replay.status_code == 201
    assert first.json() == replay.json()
    assert orm.StoredEvent.objects.filter(type="BatchCreated").count() == 1


def test_the_same_key_with_another_body_is_a_422(allocator, batch):
    batch("b1", "LAMP", 10)
    post(allocator, "/api/v1/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 1}, "k")

    response = post(
        allocator, "/api/v1/allocations", {"orderid": "o2", "sku": "LAMP", "qty": 1}, "k"
    )

    assert response.status_code == 422
    assert error_code(response) == "idempotency_key_reused"
    assert not orm.Allocation.objects.filter(orderid="o2").exists()


def test_the_same_key_on_another_endpoint_is_a_422(allocator):
    post(allocator, "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 1}, "k")
    response = post(allocator, "/api/v1/allocations", {"ref": "b1", "sku": "LAMP", "qty": 1}, "k")
    assert response.status_code == 422


def test_keys_belong_to_their_user(allocator, allocators_group, batch):
    batch("b1", "LAMP", 10)
    post(allocator, "/api/v1/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 1}, "k")
    other = User.objects.create_user("other")
    other.groups.add(allocators_group)
    client = APIClient()
    client.force_authenticate(other)

    response = post(client, "/api/v1/allocations", {"orderid": "o2", "sku": "LAMP", "qty": 1}, "k")

    assert response.status_code == 201
    assert "Idempotent-Replayed" not in response


def test_an_answer_given_before_the_command_ran_is_not_kept(allocator):
    bad = post(allocator, "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 0}, "k")
    assert bad.status_code == 400
    good = post(allocator, "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 1}, "k")
    assert good.status_code == 201
    assert not orm.IdempotencyRecord.objects.filter(status=400).exists()


def test_busy_is_a_503_with_retry_after_and_is_not_kept(allocator, monkeypatch):
    bus = get_bus()
    real_handle = bus.handle

    def conflicted(command, correlation_id=None, receipt=None):
        raise TransactionConflict("lost the race every time")

    monkeypatch.setattr(bus, "handle", conflicted)
    body = {"ref": "b1", "sku": "LAMP", "qty": 1}
    busy = post(allocator, "/api/v1/batches", body, "k")
    assert busy.status_code == 503
    assert error_code(busy) == "busy"
    assert busy["Retry-After"] == "1"

    monkeypatch.setattr(bus, "handle", real_handle)
    assert post(allocator, "/api/v1/batches", body, "k").status_code == 201


@pytest.mark.parametrize("key", ["", "k" * 256, "naïve"])
def test_a_malformed_key_is_a_400(allocator, key):
    response = post(allocator, "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 1}, key)
    assert response.status_code == 400
    assert error_code(response) == "invalid_idempotency_key"
    assert not orm.Batch.objects.exists()


def test_two_concurrent_first_requests_with_one_key_get_one_answer(allocator, monkeypatch):
    """Both find no record and both run; the unique constraint lets one record in, and the
    loser answers with the winner's response (its own CreateBatch was refused as duplicate)."""
    bus = get_bus()
    real_handle = bus.handle
    body = {"ref": "b1", "sku": "LAMP", "qty": 5}
    answers = {}

    def rival():
        try:
            answers["rival"] = post(allocator, "/api/v1/batches", body, "k")
        finally:
            connections.close_all()

    def handle_after_the_rival(command, correlation_id=None, receipt=None):
        if "rival" not in answers:  # the first request, between its lookup and its command
            answers["rival"] = None
            thread = threading.Thread(target=rival)
            thread.start()
            thread.join()
        return real_handle(command, correlation_id=correlation_id, receipt=receipt)

    monkeypatch.setattr(bus, "handle", handle_after_the_rival)
    first = post(allocator, "/api/v1/batches", body, "k")

    rival_answer = answers["rival"]
    assert rival_answer.status_code == 201
    assert "Idempotent-Replayed" not in rival_answer
    assert (first.status_code, first.json()) == (201, rival_answer.json())
    assert first["Idempotent-Replayed"] == "true"
    assert orm.IdempotencyRecord.objects.count() == 1
    assert orm.StoredEvent.objects.filter(type="BatchCreated").count() == 1
