"""GET /metrics: Prometheus text with requests, commands, deliveries, backlog and lag."""

import re

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_commands_requests_and_deliveries(anonymous, allocator, batch):
    before = anonymous.get("/metrics").content.decode()
    batch("b1", "LAMP", 5)

    allocator.post("/api/v1/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 2}, format="json")
    allocator.post("/api/v1/allocations", {"orderid": "o2", "sku": "NOPE", "qty": 2}, format="json")
    text = anonymous.get("/metrics").content.decode()

    def grew(name, **labels):
        return sample(text, name, **labels) - sample(before, name, **labels)

    assert grew("allocation_commands_total", command="Allocate", outcome="ok") == 1
    assert grew("allocation_commands_total", command="Allocate", outcome="rejected") == 1
    assert (
        grew(
            "allocation_http_request_seconds_count",
            route="api/v1/allocations",
            method="POST",
            status="201",
        )
        == 1
    )
    assert (
        grew(
            "allocation_deliveries_run_total",
            handler="read_model.add_allocation",
            outcome="done",
        )
        == 1
    )
    assert sample(text, "allocation_deliveries", status="done") >= 3
    assert sample(text, "allocation_deliveries", status="pending") == 0
    assert "allocation_outbox_backlog 0.0" in text
    assert sample(text, "allocation_projection_lag_seconds", quantile="0.99") >= 0


def test_metrics_can_require_a_bearer_token(anonymous, settings):
    settings.ALLOCATION_METRICS_TOKEN = "s3cret"

    assert anonymous.get("/metrics").status_code == 401
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert anonymous.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret").status_code == 200
