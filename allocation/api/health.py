"""`GET /health/`: is this web process ready to serve? Public, for load balancers and probes.

Ready means the database answers: every request needs it. The broker and the outbox are
reported but do not make the service unready: with the broker down, or deliveries stalled, a
write still commits and its events wait in the outbox (docs/architecture.md), so the answer is
200 with `"status": "degraded"`.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from allocation.metrics import outbox_backlog

logger = logging.getLogger(__name__)


def check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"ok": True}


def check_broker() -> dict[str, Any]:
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return {"ok": True, "detail": "no broker: tasks run in-process (eager)"}
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
    return {"ok": True}


def check_outbox() -> dict[str, Any]:
    """Due deliveries (pending, past their lease or backoff), and how long the oldest has been
    due: not ok when that is longer than ALLOCATION_STALLED_AFTER, i.e. nobody takes them (no
    worker, a worker that cannot reach the database, a broker that is down)."""
    backlog, oldest = outbox_backlog()
    return {
        "ok": oldest <= settings.ALLOCATION_STALLED_AFTER,
        "backlog": backlog,
        "oldest_due_seconds": round(oldest, 1),
    }


# name -> (check, whether the service is unready without it)
CHECKS = {
    "database": (check_database, True),
    "broker": (check_broker, False),
    "outbox": (check_outbox, False),
}


class HealthCheckSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded", "unavailable"])
    checks = serializers.DictField(
        child=serializers.DictField(),
        help_text='Per check: {"ok": bool, "detail"?: str, "backlog"?: int, '
        '"oldest_due_seconds"?: float}',
    )


class HealthCheckApi(APIView):
    """Database, broker and outbox backlog: 200 when ready, 503 when the database is down."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    @extend_schema(
        operation_id="health_check",
        summary="Readiness",
        responses={
            200: HealthCheckSerializer,
            503: OpenApiResponse(HealthCheckSerializer, description="The database is down"),
        },
        tags=["health"],
        auth=[],
    )
    def get(self, request: Request) -> Response:
        results, ready, healthy = {}, True, True
        for name, (check, required) in CHECKS.items():
            try:
                results[name] = check()
                healthy = healthy and results[name]["ok"]
            except Exception as exc:  # a failed check is a finding, not an error
                logger.warning("health check %s failed: %s", name, exc)
                # Public endpoint: the error's class only; its message (hosts...) goes to the log.
                results[name] = {"ok": False, "detail": type(exc).__name__}
                healthy = False
                ready = ready and not required
        status = "ok" if healthy else "degraded" if ready else "unavailable"
        return Response(
            {"status": status, "checks": results},
            status=200 if ready else 503,
            headers={"Cache-Control": "no-store"},
        )
