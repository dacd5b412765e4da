"""The book-compatible HTTP API, driven as a client would, against the real stack."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest

from tests.e2e.harness import E2E_TIMEOUT, wait_until

pytestmark = pytest.mark.e2e

TODAY = date.today()


def test_add_batch_answers_201_with_or_without_eta(api, unique):
    sku = unique("sku")

    warehouse = api.add_batch(unique("warehouse"), sku, 10, eta=None)
    shipment = api.add_batch(unique("shipment"), sku, 10, eta=TODAY + timedelta(days=3))

    assert (warehouse.status, warehouse.body) == (201, {"ref": unique("warehouse")})
    assert (shipment.status, shipment.body) == (201, {"ref": unique("shipment")})


def test_allocate_then_read_straight_away_sees_the_allocation(api, unique):
    sku, batch, order = unique("sku"), unique("batch"), unique("order")
    assert api.add_batch(batch, sku, 100).status == 201

    response = api.allocate(order, sku, 3)
    # No polling: the write endpoint waits for the worker's projection before it answers.
    allocations = api.allocations(order)

    assert response.status == 202
    assert (allocations.status, allocations.body) == (200, [{"sku": sku, "batchref": batch}])


def test_allocation_prefers_warehouse_stock_then_the_earliest_shipment(api, unique):
    sku = unique("sku")
    late, early, warehouse = unique("late"), unique("early"), unique("warehouse")
    # Added latest-first so that creation order cannot be what decides.
    assert api.add_batch(late, sku, 5, eta=TODAY + timedelta(days=20)).status == 201
    assert api.add_batch(early, sku, 5, eta=TODAY + timedelta(days=2)).status == 201
    assert api.add_batch(warehouse, sku, 5, eta=None).status == 201

    placed = []
    for n in range(3):
        order = unique(f"order{n}")
        assert api.allocate(order, sku, 5).status == 202
        placed.append(api.batchref_of(order))

    assert placed == [warehouse, early, late]


def test_out_of_stock_is_accepted_but_allocates_nothing(stack, api, unique):
    sku, batch = unique("sku"), unique("batch")
    assert api.add_batch(batch, sku, 5).status == 201

    response = api.allocate(unique("too-big"), sku, 6)

    assert response.status == 202
    assert api.allocations(unique("too-big")).status == 404
    # The worker mails the stock team (console email backend: the mail lands in its log).
    wait_until(
        lambda: f"Subject: Out of stock: {sku}" in stack.worker.log() + stack.worker.log("stdout"),
        E2E_TIMEOUT,
        f"the worker to send the out-of-stock email for {sku}",
    )
    # The stock is still there for an order that fits.
    assert api.allocate(unique("fits"), sku, 5).status == 202
    assert api.batchref_of(unique("fits")) == batch


def test_unknown_sku_is_a_400_with_the_book_message(api, unique):
    sku = unique("no-such-sku")

    response = api.allocate(unique("order"), sku, 1)

    assert (response.status, response.body) == (400, {"message": f"Invalid sku {sku}"})


def test_allocations_of_an_unknown_order_are_404(api, unique):
    assert api.allocations(unique("nobody")).status == 404


@pytest.mark.parametrize("token", [None, "not-a-valid-token"])
def test_requests_without_a_valid_token_are_refused(api, unique, token):
    sku, order = unique("sku"), unique("order")
    assert api.add_batch(unique("batch"), sku, 10).status == 201

    refused = [
        api.add_batch(unique("other-batch"), sku, 10, token=token),
        api.allocate(order, sku, 1, token=token),
        api.allocations(order, token=token),
    ]

    assert {r.status for r in refused} <= {401, 403}, refused
    # Nothing happened on the refused writes.
    assert api.allocations(order).status == 404
    assert api.add_batch(unique("other-batch"), sku, 10).status == 201


def test_events_are_delivered_by_the_celery_worker_not_eagerly(stack, api, unique):
    succeeded = re.compile(r"Task allocation\.deliver\[[\w-]+\] succeeded")
    before = len(succeeded.findall(stack.worker.log()))
    sku, batch, order = unique("sku"), unique("batch"), unique("order")
    assert api.add_batch(batch, sku, 10).status == 201

    assert api.allocate(order, sku, 1).status == 202

    assert api.batchref_of(order) == batch
    wait_until(
        lambda: len(succeeded.findall(stack.worker.log())) > before,
        E2E_TIMEOUT,
        "the worker to log an allocation.deliver task as succeeded",
    )
    assert "allocation.deliver" not in stack.web.log() + stack.web.log("stdout")
