"""Batches: create, list, show and change quantity over /api/v1."""

import pytest

from allocation import models as orm
from tests.api.conftest import error_code

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_a_batch_dispatches_create_batch(allocator):
    response = allocator.post(
        "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 10, "eta": "2030-01-02"}
    )

    assert response.status_code == 201
    assert response.json() == {"ref": "b1", "sku": "LAMP", "qty": 10, "eta": "2030-01-02"}
    stored = orm.Batch.objects.get(reference="b1")
    assert (stored.product_id, stored.purchased_quantity, str(stored.eta)) == (
        "LAMP",
        10,
        "2030-01-02",
    )
    event = orm.StoredEvent.objects.get(type="BatchCreated")
    assert event.payload["eta"] == "2030-01-02"
    assert event.correlation_id == response["X-Correlation-ID"]


def test_create_a_batch_with_no_eta(allocator):
    response = allocator.post("/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 10})
    assert response.status_code == 201
    assert response.json()["eta"] is None
    assert orm.Batch.objects.get(reference="b1").eta is None


def test_a_duplicate_batch_is_a_409(allocator, batch):
    batch("b1", "LAMP", 10)
    response = allocator.post("/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 5})
    assert response.status_code == 409
    assert error_code(response) == "duplicate_batch"
    assert response.json()["error"]["details"] == {"ref": ["Batch b1 already exists"]}


def test_list_batches_from_the_read_model_filtered_by_sku(reader, batch):
    batch("b2", "LAMP", 10, "2030-01-01")
    batch("b1", "LAMP", 5)
    batch("c1", "DESK", 3)

    response = reader.get("/api/v1/batches", {"sku": "LAMP"})

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert body["results"] == [  # by sku, then as allocation prefers: warehouse stock first
        {"ref": "b1", "sku": "LAMP", "eta": None, "purchased": 5, "allocated": 0, "available": 5},
        {
            "ref": "b2",
            "sku": "LAMP",
            "eta": "2030-01-01",
            "purchased": 10,
            "allocated": 0,
            "available": 10,
        },
    ]
    assert reader.get("/api/v1/batches").json()["count"] == 3


def test_the_batch_list_is_paginated(reader, batch):
    for n in range(5):
        batch(f"b{n}", "LAMP", 1)

    first = reader.get("/api/v1/batches", {"page_size": 2}).json()
    assert first["count"] == 5
    assert [b["ref"] for b in first["results"]] == ["b0", "b1"]
    second = reader.get(first["next"]).json()
    assert [b["ref"] for b in second["results"]] == ["b2", "b3"]

    response = reader.get("/api/v1/batches", {"page": 99})
    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_show_a_batch_with_its_order_lines(reader, allocator, batch):
    batch("b1", "LAMP", 10)
    allocator.post("/api/v1/allocations", {"orderid": "o2", "sku": "LAMP", "qty": 3})
    allocator.post("/api/v1/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 2})

    response = reader.get("/api/v1/batches/b1")

    assert response.status_code == 200
    assert response.json() == {
        "ref": "b1",
        "sku": "LAMP",
        "eta": None,
        "purchased": 10,
        "allocated": 5,
        "available": 5,
        "lines": [
            {"orderid": "o1", "sku": "LAMP", "qty": 2},
            {"orderid": "o2", "sku": "LAMP", "qty": 3},
        ],
    }


def test_an_unknown_batch_is_a_404(reader):
    response = reader.get("/api/v1/batches/nope")
    assert response.status_code == 404
    assert error_code(response) == "unknown_batch"


def test_change_a_batch_quantity_reallocates_what_no_longer_fits(allocator, reader, batch):
    batch("warehouse", "DESK", 10)
    batch("ship", "DESK", 10, "2030-01-01")
    allocator.post("/api/v1/allocations", {"orderid": "o1", "sku": "DESK", "qty": 6})
    allocator.post("/api/v1/allocations", {"orderid": "o2", "sku": "DESK", "qty": 4})

    response = allocator.patch("/api/v1/batches/warehouse", {"qty": 7})

    assert response.status_code == 200
    assert response.json() == {"ref": "warehouse", "qty": 7}
    assert reader.get("/api/v1/batches/warehouse").json()["purchased"] == 7
    assert reader.get("/api/v1/orders/o2/allocations").json() == [
        {"orderid": "o2", "sku": "DESK", "qty": 4, "batchref": "ship"}
    ]


def test_changing_an_unknown_batch_is_a_404(allocator):
    response = allocator.patch("/api/v1/batches/nope", {"qty": 7})
    assert response.status_code == 404
    assert error_code(response) == "unknown_batch"


@pytest.mark.parametrize("qty", [0, -1, "7", 7.0, True, None, 2**31])
def test_a_bad_new_quantity_is_invalid_quantity(allocator, batch, qty):
    batch("b1", "LAMP", 10)
    response = allocator.patch("/api/v1/batches/b1", {"qty": qty})
    assert response.status_code == 400
    assert error_code(response) == "invalid_quantity"
    assert list(response.json()["error"]["details"]) == ["qty"]
    assert orm.Batch.objects.get(reference="b1").purchased_quantity == 10


def test_other_methods_are_not_allowed(allocator):
    response = allocator.put("/api/v1/batches/b1", {"qty": 7})
    assert response.status_code == 405
    assert error_code(response) == "method_not_allowed"
