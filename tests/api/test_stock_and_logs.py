"""Stock per sku (read model), the event log and delivery status over /api/v1."""

import pytest

from allocation import models as orm
from tests.api.conftest import error_code

pytestmark = pytest.mark.django_db(transaction=True)


def test_stock_of_a_sku(reader, allocator, batch):
    batch("a", "RUG", 10)
    batch("b", "RUG", 5, "2030-02-01")
    batch("c", "RUG", 5, "2030-01-01")
    allocator.post("/api/v1/allocations", {"orderid": "o1", "sku": "RUG", "qty": 6})

    response = reader.get("/api/v1/stock/RUG")

    assert response.status_code == 200
    assert response.json() == {
        "sku": "RUG",
        "purchased": 20,
        "allocated": 6,
        "available": 14,
        "batch_count": 3,
        "next_eta": "2030-01-01",
    }


def test_stock_of_an_unknown_sku_is_a_404(reader):
    response = reader.get("/api/v1/stock/NOPE")
    assert response.status_code == 404
    assert error_code(response) == "invalid_sku"


def test_stock_of_every_sku_paginated(reader, batch):
    batch("a", "RUG", 10)
    batch("b", "LAMP", 5)

    body = reader.get("/api/v1/stock").json()

    assert body["count"] == 2
    assert [(s["sku"], s["available"], s["next_eta"]) for s in body["results"]] == [
        ("LAMP", 5, None),
        ("RUG", 10, None),
    ]


def test_the_event_log_filters_by_sku_type_and_correlation_id(reader, allocator, batch):
    batch("a", "RUG", 10)
    batch("b", "LAMP", 10)
    allocated = allocator.post(
        "/api/v1/allocations",
        {"orderid": "o1", "sku": "RUG", "qty": 1},
        HTTP_X_CORRELATION_ID="trace-1",
    )
    assert allocated["X-Correlation-ID"] == "trace-1"

    everything = reader.get("/api/v1/events").json()
    assert [e["type"] for e in everything["results"]] == [
        "BatchCreated",
        "BatchCreated",
        "Allocated",
    ]
    rug = reader.get("/api/v1/events", {"sku": "RUG"}).json()["results"]
    assert [e["type"] for e in rug] == ["BatchCreated", "Allocated"]
    [event] = reader.get("/api/v1/events", {"correlation_id": "trace-1"}).json()["results"]
    assert reader.get("/api/v1/events", {"type": "Allocated"}).json()["results"] == [event]
    assert event["payload"] == {
        "orderid": "o1",
        "sku": "RUG",
        "qty": 1,
        "batchref": "a",
        "version": 2,
    }
    assert (event["sku"], event["version"], event["correlation_id"]) == ("RUG", 2, "trace-1")
    assert event["causation_id"]


def test_the_event_log_pages_with_a_cursor(reader, batch):
    for n in range(5):
        batch(f"b{n}", "RUG", 1)

    first = reader.get("/api/v1/events", {"page_size": 3}).json()
    second = reader.get(first["next"]).json()

    refs = [e["payload"]["ref"] for e in first["results"] + second["results"]]
    assert refs == ["b0", "b1", "b2", "b3", "b4"]
    assert second["next"] is None


@pytest.mark.parametrize(
    "query",
    [{"type": "Nonsense"}, {"sku": "x" * 300}, {"sku": "a\x00b"}, {"correlation_id": "x" * 65}],
)
def test_a_bad_event_filter_is_a_400(reader, query):
    response = reader.get("/api/v1/events", query)
    assert response.status_code == 400
    assert error_code(response) == "validation_error"
    assert list(response.json()["error"]["details"]) == list(query)


def test_deliveries_show_each_handler_status_dead_ones_included(reader, allocator, batch):
    batch("a", "RUG", 10)
    allocator.post("/api/v1/allocations", {"orderid": "o1", "sku": "RUG", "qty": 1})
    dead = orm.Delivery.objects.filter(event__type="Allocated").first()
    dead.status, dead.attempts, dead.last_error = "dead", 8, "Traceback: boom"
    dead.save()

    body = reader.get("/api/v1/deliveries").json()
    rows = {(d["event_type"], d["handler"]): d for d in body["results"]}
    assert {d["status"] for d in body["results"]} == {"done", "dead"}
    assert rows[("Allocated", dead.handler)]["last_error"] == "Traceback: boom"
    assert rows[("Allocated", dead.handler)]["attempts"] == 8
    assert rows[("Allocated", dead.handler)]["sku"] == "RUG"

    only_dead = reader.get("/api/v1/deliveries", {"status": "dead"}).json()["results"]
    assert [(d["id"], d["event"]) for d in only_dead] == [(dead.id, str(dead.event_id))]
    of_event = reader.get("/api/v1/deliveries", {"event": str(dead.event_id)}).json()["results"]
    assert {d["event"] for d in of_event} == {str(dead.event_id)}


@pytest.mark.parametrize("query", [{"status": "lost"}, {"event": "not-a-uuid"}])
def test_a_bad_delivery_filter_is_a_400(reader, query):
    response = reader.get("/api/v1/deliveries", query)
    assert response.status_code == 400
    assert error_code(response) == "validation_error"
