"""The write throttle, /health/, and the OpenAPI schema and its UI."""

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import OperationalError
from django.utils import timezone

from allocation.api import health
from allocation.apps import get_bus, get_runner
from allocation.models import Delivery
from tests.api.conftest import error_code


@pytest.mark.django_db(transaction=True)
def test_writes_are_throttled_per_user(allocator, reader, settings):
    settings.ALLOCATION_WRITE_THROTTLE_RATE = "2/minute"
    bodies = [{"ref": f"b{n}", "sku": "LAMP", "qty": 1} for n in range(3)]

    answers = [allocator.post("/api/v1/batches", body) for body in bodies]

    assert [a.status_code for a in answers] == [201, 201, 429]
    assert error_code(answers[2]) == "throttled"
    assert int(answers[2]["Retry-After"]) > 0
    assert reader.get("/api/v1/batches").status_code == 200  # reads are not throttled
    # the book-compatible writes share the rate
    compat = allocator.post("/allocate", {"orderid": "o1", "sku": "LAMP", "qty": 1})
    assert compat.status_code == 429
    assert set(compat.json()) == {"message"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("rate", ["off", ""])
def test_the_throttle_can_be_switched_off(allocator, settings, rate):
    settings.ALLOCATION_WRITE_THROTTLE_RATE = rate
    for n in range(5):
        body = {"ref": f"b{n}", "sku": "LAMP", "qty": 1}
        assert allocator.post("/api/v1/batches", body).status_code == 201


@pytest.mark.django_db(transaction=True)
def test_a_dead_cache_does_not_fail_writes(allocator, dead_cache):
    assert allocator.post("/api/v1/batches", {"ref": "b1", "sku": "X", "qty": 1}).status_code == 201


@pytest.mark.django_db
def test_health_is_public_and_ready(anonymous):
    response = anonymous.get("/health/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["broker"]["ok"] is True
    assert body["checks"]["outbox"] == {"ok": True, "backlog": 0, "oldest_due_seconds": 0}


@pytest.mark.django_db(transaction=True)
def test_health_reports_the_backlog_and_turns_degraded_when_deliveries_stall(
    anonymous, batch, monkeypatch, settings
):
    monkeypatch.setattr(get_bus(), "wake", lambda deliveries: None)  # the wake-ups are lost
    settings.ALLOCATION_STALLED_AFTER = 60
    batch("b1", "LAMP", 1)
    pending = Delivery.objects.filter(status="pending")
    outbox = anonymous.get("/health/").json()["checks"]["outbox"]
    # Due from their commit on; waiting for a moment is being busy, not being stuck.
    assert outbox["ok"] is True
    assert outbox["backlog"] == pending.count() > 0
    assert 0 <= outbox["oldest_due_seconds"] < 60

    pending.update(next_attempt_at=timezone.now() - timedelta(seconds=90))  # nobody took them
    stalled = anonymous.get("/health/")
    assert stalled.status_code == 200  # writes still commit: degraded, not unavailable
    assert stalled.json()["status"] == "degraded"
    assert stalled.json()["checks"]["outbox"]["ok"] is False
    assert stalled.json()["checks"]["outbox"]["oldest_due_seconds"] >= 90

    get_runner().run_due()  # deliveries flow again
    healthy = anonymous.get("/health/").json()
    assert healthy["status"] == "ok"
    assert healthy["checks"]["outbox"] == {"ok": True, "backlog": 0, "oldest_due_seconds": 0}


@pytest.mark.django_db
def test_health_is_503_when_the_database_is_down(anonymous, monkeypatch):
    def database_down():
        raise OperationalError("connection refused by db.internal:5432")

    monkeypatch.setitem(health.CHECKS, "database", (database_down, True))
    response = anonymous.get("/health/")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["checks"]["database"] == {"ok": False, "detail": "OperationalError"}


@pytest.mark.django_db
def test_a_dead_broker_degrades_but_does_not_unready(anonymous, monkeypatch, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    monkeypatch.setattr("config.celery.app.conf.broker_url", "redis://127.0.0.1:1/0")
    monkeypatch.setattr("config.celery.app.conf.broker_write_url", "redis://127.0.0.1:1/0")
    response = anonymous.get("/health/")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["broker"]["ok"] is False


def test_the_schema_builds_and_validates_with_no_warnings(tmp_path):
    """The CI check: `manage.py spectacular --fail-on-warn --validate`."""
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--fail-on-warn", "--validate", "--file", str(target))
    schema = target.read_text()
    for path in (
        "/api/v1/batches:",
        "/api/v1/batches/{ref}:",
        "/api/v1/allocations:",
        "/api/v1/orders/{orderid}/allocations/{sku}:",
        "/api/v1/stock/{sku}:",
        "/api/v1/events:",
        "/api/v1/deliveries:",
        "/health/:",
    ):
        assert path in schema
    assert "/add_batch" not in schema  # the book-compatible endpoints are documented in README


@pytest.mark.django_db
def test_the_schema_and_its_ui_are_public_and_served_locally(anonymous):
    schema = anonymous.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert schema.json()["info"]["title"] == "Allocation service API"
    docs = anonymous.get("/api/docs/")
    assert docs.status_code == 200
    page = docs.content.decode()
    assert "swagger-ui" in page
    assert "cdn" not in page.lower()  # drf-spectacular-sidecar: no network needed
    assert "/static/drf_spectacular_sidecar/" in page
