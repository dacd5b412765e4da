"""Allocations: allocate, cancel, and an order's allocations over /api/v1."""

import pytest
from django.core import mail

from allocation import models as orm
from tests.api.conftest import error_code

pytestmark = pytest.mark.django_db(transaction=True)


def allocate(client, orderid="o1", sku="LAMP", qty=3, **extra):
    return client.post("/api/v1/allocations", {"orderid": orderid, "sku": sku, "qty": qty}, **extra)


def test_allocate_answers_the_batch(allocator, batch):
    batch("later", "LAMP", 10, "2030-01-01")
    batch("now", "LAMP", 10)

    response = allocate(allocator)

    assert response.status_code == 201
    assert response.json() == {"orderid": "o1", "sku": "LAMP", "qty": 3, "batchref": "now"}
    assert orm.Allocation.objects.get(orderid="o1").batch.reference == "now"


def test_allocating_the_same_line_again_reports_the_same_batch(allocator, batch):
    batch("b1", "LAMP", 10)
    assert allocate(allocator).json()["batchref"] == "b1"
    response = allocate(allocator)
    assert response.status_code == 201
    assert response.json()["batchref"] == "b1"
    assert orm.Batch.objects.get(reference="b1").allocated_quantity == 3


def test_the_same_line_with_another_quantity_is_an_allocation_conflict(allocator, batch):
    batch("b1", "LAMP", 10)
    allocate(allocator, qty=3)
    response = allocate(allocator, qty=4)
    assert response.status_code == 409
    assert error_code(response) == "allocation_conflict"


def test_out_of_stock_is_a_409_and_its_event_is_committed(allocator, batch):
    batch("b1", "LAMP", 2)

    response = allocate(allocator, qty=3)

    assert response.status_code == 409
    assert error_code(response) == "out_of_stock"
    assert not orm.Allocation.objects.exists()
    assert orm.StoredEvent.objects.filter(type="OutOfStock", sku="LAMP").count() == 1
    assert [m.subject for m in mail.outbox] == ["Out of stock: LAMP"]


def test_an_unknown_sku_is_invalid_sku(allocator):
    response = allocate(allocator, sku="NOPE")
    assert response.status_code == 400
    assert error_code(response) == "invalid_sku"
    assert response.json()["error"]["details"] == {"sku": ["Invalid sku NOPE"]}


def test_an_order_lists_its_allocations(reader, allocator, batch):
    batch("b1", "LAMP", 10)
    batch("c1", "DESK", 10)
    allocate(allocator, sku="LAMP", qty=2)
    allocate(allocator, sku="DESK", qty=1)

    response = reader.get("/api/v1/orders/o1/allocations")

    assert response.status_code == 200
    assert response.json() == [
        {"orderid": "o1", "sku": "DESK", "qty": 1, "batchref": "c1"},
        {"orderid": "o1", "sku": "LAMP", "qty": 2, "batchref": "b1"},
    ]


def test_an_order_with_no_allocations_has_an_empty_list(reader):
    response = reader.get("/api/v1/orders/nothing/allocations")
    assert response.status_code == 200
    assert response.json() == []


def test_cancel_an_allocation_frees_its_stock(allocator, reader, batch):
    batch("b1", "LAMP", 3)
    allocate(allocator, qty=3)

    response = allocator.delete("/api/v1/orders/o1/allocations/LAMP")

    assert response.status_code == 204
    assert response.content == b""
    assert reader.get("/api/v1/orders/o1/allocations").json() == []
    assert reader.get("/api/v1/stock/LAMP").json()["available"] == 3
    assert allocate(allocator, orderid="o2", qty=3).json()["batchref"] == "b1"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/orders/o1/allocations/LAMP",  # the order has no line of this sku
        "/api/v1/orders/o1/allocations/NOPE",  # no such sku at all
        "/api/v1/orders/o1/allocations/" + "x" * 300,  # no such sku could exist
    ],
)
def test_cancelling_what_is_not_allocated_is_a_404(allocator, batch, path):
    batch("b1", "LAMP", 3)
    response = allocator.delete(path)
    assert response.status_code == 404
    assert error_code(response) == "not_allocated"
