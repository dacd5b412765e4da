"""`Prefer: wait=<seconds>` makes a v1 write answer after its read-model projections ran."""

import threading
import time

import pytest
from django.db import connections

from allocation.api.v1.base import preferred_wait
from allocation.apps import get_bus

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def slow_worker(monkeypatch):
    """Deliveries run in another thread, `delay` seconds after commit, like a busy worker."""
    bus = get_bus()
    threads = []
    state = {"delay": 0.3}

    def deliver_later(delivery_ids):
        def run():
            try:
                time.sleep(state["delay"])
                bus.deliver_all(delivery_ids)
            finally:
                connections.close_all()

        thread = threading.Thread(target=run)
        threads.append(thread)
        thread.start()

    monkeypatch.setattr(bus, "dispatch", deliver_later)
    yield state
    for thread in threads:
        thread.join()


def test_with_prefer_wait_the_read_model_shows_the_write_on_return(allocator, reader, slow_worker):
    response = allocator.post(
        "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 5}, HTTP_PREFER="wait=2"
    )

    assert response.status_code == 201
    assert response["Preference-Applied"] == "wait=2"
    assert reader.get("/api/v1/batches/b1").status_code == 200


def test_without_it_the_write_returns_before_its_projections(allocator, reader, slow_worker):
    response = allocator.post("/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 5})

    assert response.status_code == 201
    assert "Preference-Applied" not in response
    assert reader.get("/api/v1/batches/b1").status_code == 404  # not projected yet


def test_the_wait_is_capped_by_the_read_your_writes_timeout(allocator, slow_worker, settings):
    settings.ALLOCATION_READ_YOUR_WRITES_TIMEOUT = 1.5
    response = allocator.post(
        "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 5}, HTTP_PREFER="wait=600"
    )
    assert response["Preference-Applied"] == "wait=1.5"

    slow_worker["delay"] = 3.0
    settings.ALLOCATION_READ_YOUR_WRITES_TIMEOUT = 0.2
    started = time.monotonic()
    response = allocator.post(
        "/api/v1/batches", {"ref": "b2", "sku": "LAMP", "qty": 5}, HTTP_PREFER="wait=600"
    )
    assert time.monotonic() - started < 2
    assert response.status_code == 201
    assert "Preference-Applied" not in response


def test_a_wait_that_runs_out_is_not_reported_as_applied(allocator, slow_worker):
    slow_worker["delay"] = 1.0
    response = allocator.post(
        "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 5}, HTTP_PREFER="wait=0.1"
    )
    assert response.status_code == 201  # the write committed all the same
    assert "Preference-Applied" not in response


def test_every_v1_write_honours_it(allocator, reader, batch):
    batch("b1", "LAMP", 5)
    allocated = allocator.post(
        "/api/v1/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 1}, HTTP_PREFER="wait=1"
    )
    changed = allocator.patch("/api/v1/batches/b1", {"qty": 4}, HTTP_PREFER="wait=1")
    cancelled = allocator.delete("/api/v1/orders/o1/allocations/LAMP", HTTP_PREFER="wait=1")
    assert [r["Preference-Applied"] for r in (allocated, changed, cancelled)] == ["wait=1"] * 3


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("wait=5", 5),
        ("respond-async, wait=10", 10),
        ('wait="2.5"', 2.5),
        ("WAIT=1; x=y", 1),
        ("return=minimal", None),
        ("wait=soon", None),
        ("wait=-1", None),
        ("wait=inf", None),
        ("", None),
    ],
)
def test_the_prefer_header_is_read_as_rfc_7240_says(header, seconds):
    assert preferred_wait(header) == seconds


def test_the_correlation_id_is_echoed_or_made(reader):
    given = reader.get("/api/v1/stock", HTTP_X_CORRELATION_ID="trace-42")
    assert given["X-Correlation-ID"] == "trace-42"
    made = reader.get("/api/v1/stock")
    assert len(made["X-Correlation-ID"]) == 36
    refused = reader.get("/api/v1/stock/NOPE", HTTP_X_CORRELATION_ID="trace-43")
    assert refused["X-Correlation-ID"] == "trace-43"  # errors too
