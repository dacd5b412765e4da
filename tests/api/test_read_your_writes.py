"""`Prefer: wait=<seconds>` makes a v1 write answer after its read-model projections ran."""

import threading
import time

import pytest
from django.db import connections

from allocation.api.v1.base import preferred_wait
from allocation.apps import get_bus, get_runner

pytestmark = pytest.mark.django_db(transaction=True)


class Worker:
    """Worker steps in another thread, one per commit, each starting only when the test lets
    it (`release()`), or at once (`free()`): a busy worker, without sleeping."""

    def __init__(self):
        self.gate = threading.Event()
        self.threads: list[threading.Thread] = []

    def wake(self, deliveries) -> None:
        def run():
            try:
                self.gate.wait(60)
                get_runner().run_due()
            finally:
                connections.close_all()

        thread = threading.Thread(target=run)
        self.threads.append(thread)
        thread.start()

    def free(self) -> None:
        self.gate.set()


@pytest.fixture
def worker(monkeypatch):
    worker = Worker()
    monkeypatch.setattr(get_bus(), "wake", worker.wake)
    yield worker
    worker.free()
    for thread in worker.threads:
        thread.join(60)


def test_with_prefer_wait_the_read_model_shows_the_write_on_return(
    allocator, reader, worker, settings
):
    settings.ALLOCATION_READ_YOUR_WRITES_TIMEOUT = 60
    worker.free()  # it runs whenever it gets to it; the request waits for it
    response = allocator.post(
        "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 5}, HTTP_PREFER="wait=60"
    )

    assert response.status_code == 201
    assert response["Preference-Applied"] == "wait=60"
    assert reader.get("/api/v1/batches/b1").status_code == 200


def test_without_it_the_write_returns_before_its_projections(allocator, reader, worker):
    response = allocator.post("/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 5})

    assert response.status_code == 201
    assert "Preference-Applied" not in response
    assert reader.get("/api/v1/batches/b1").status_code == 404  # not projected yet


def test_the_wait_is_capped_by_the_read_your_writes_timeout(allocator, worker, settings):
    settings.ALLOCATION_READ_YOUR_WRITES_TIMEOUT = 0.2
    started = time.monotonic()
    response = allocator.post(
        "/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 5}, HTTP_PREFER="wait=600"
    )

    assert time.monotonic() - started < 60  # 0.2 s in fact: not the 600 asked for
    assert response.status_code == 201  # the write committed all the same
    assert "Preference-Applied" not in response

    settings.ALLOCATION_READ_YOUR_WRITES_TIMEOUT = 60
    worker.free()
    response = allocator.post(
        "/api/v1/batches", {"ref": "b2", "sku": "LAMP", "qty": 5}, HTTP_PREFER="wait=600"
    )
    assert response["Preference-Applied"] == "wait=60"


def test_a_wait_that_runs_out_is_not_reported_as_applied(allocator, worker):
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
