"""Prometheus metrics: `GET /metrics`.

Counters and histograms live in the process that observes them (web, worker, consumer). With
PROMETHEUS_MULTIPROC_DIR set (one directory shared by the processes of a host, emptied at
start), `/metrics` reports all of them together. Delivery states, the outbox backlog and the
projection lag are read from the database when scraped, so they are the same from anywhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from django.conf import settings
from django.db import connection
from django.db.models import Count, Min
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

COMMANDS = Counter(
    "allocation_commands_total", "Commands handled, by command and outcome", ["command", "outcome"]
)
DELIVERIES_RUN = Counter(
    "allocation_deliveries_run_total",
    "Deliveries run, by handler and outcome",
    ["handler", "outcome"],
)
REQUESTS = Histogram(
    "allocation_http_request_seconds",
    "HTTP requests, by route, method and status",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class OutboxCollector(Collector):
    """Read at scrape time from the outbox tables."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from allocation.apps import read_model_handlers
        from allocation.models import Delivery

        by_status = GaugeMetricFamily(
            "allocation_deliveries", "Event deliveries by status", labels=["status"]
        )
        counts = dict(Delivery.objects.values_list("status").annotate(n=Count("pk")))
        for status in Delivery.Status.values:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        backlog, oldest = outbox_backlog()
        yield GaugeMetricFamily(
            "allocation_outbox_backlog",
            "Deliveries due now: pending, past their lease or backoff",
            value=backlog,
        )
        yield GaugeMetricFamily(
            "allocation_outbox_oldest_due_seconds",
            "How long the oldest due delivery has waited to be taken (0: none is due)",
            value=oldest,
        )
        lag = GaugeMetricFamily(
            "allocation_projection_lag_seconds",
            "Event commit to read-model update, over the projections done in the last 5 minutes",
            labels=["quantile"],
        )
        for quantile, seconds in projection_lag(read_model_handlers()).items():
            lag.add_metric([quantile], seconds)
        yield lag


def outbox_backlog() -> tuple[int, float]:
    """How many deliveries are due, and how many seconds the oldest of them has been due."""
    from allocation.models import Delivery

    now = timezone.now()
    due = Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now)
    found = due.aggregate(n=Count("pk"), oldest=Min("next_attempt_at"))
    oldest = (now - found["oldest"]).total_seconds() if found["oldest"] else 0.0
    return found["n"], oldest


def projection_lag(handlers: frozenset[str]) -> dict[str, float]:
    if connection.vendor != "postgresql":
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY lag)
            FROM (SELECT extract(epoch FROM d.done_at - e.occurred_at) AS lag
                  FROM allocation_delivery d JOIN allocation_storedevent e ON e.id = d.event_id
                  WHERE d.status = 'done' AND d.handler = ANY(%s)
                    AND d.done_at > now() - interval '5 minutes') recent
            """,
            [list(handlers)],
        )
        p50, p99 = cursor.fetchone()
    return {} if p50 is None else {"0.5": p50, "0.99": p99}


def registries() -> tuple[CollectorRegistry, CollectorRegistry]:
    """This process's metrics (or every process's, in multiprocess mode), and the outbox's."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        observed = CollectorRegistry()
        multiprocess.MultiProcessCollector(observed)
    else:
        observed = REGISTRY
    scraped = CollectorRegistry()
    scraped.register(OutboxCollector())
    return observed, scraped


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Public unless ALLOCATION_METRICS_TOKEN is set: then `Authorization: Bearer <token>`."""
    token = settings.ALLOCATION_METRICS_TOKEN
    if token and not constant_time_compare(
        request.headers.get("Authorization", ""), f"Bearer {token}"
    ):
        return HttpResponse("metrics need a bearer token\n", status=401, content_type="text/plain")
    body = b"".join(generate_latest(r) for r in registries())
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


class RequestMetricsMiddleware:
    """Times every request, labelled by its URL pattern (not the raw path: bounded labels)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        start = time.perf_counter()
        response = self.get_response(request)
        match = request.resolver_match
        route = match.route if match else "unmatched"
        REQUESTS.labels(route, request.method, response.status_code).observe(
            time.perf_counter() - start
        )
        return response
