"""The base views of /api/v1: error envelope, correlation id, permissions, read-your-writes."""

from __future__ import annotations

import math
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import pagination, serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from allocation.api.commands import run_command
from allocation.api.compat import CORRELATION_HEADER, correlation_id
from allocation.api.v1.errors import ApiError, v1_exception_handler
from allocation.api.v1.permissions import CommandPermission
from allocation.api.v1.schema import V1AutoSchema
from allocation.domain import commands

# Path segments and filter values are stored as CharField(max_length=255).
MAX_IDENTIFIER = 255


class V1Api(APIView):
    """Every /api/v1 view: the v1 error envelope and `X-Correlation-ID` on every response."""

    permission_classes = [CommandPermission]
    schema = V1AutoSchema()
    correlation_id: str

    def get_exception_handler(self):
        return v1_exception_handler

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.correlation_id = correlation_id(request)
        self.headers[CORRELATION_HEADER] = self.correlation_id
        super().initial(request, *args, **kwargs)

    def validated(self, serializer_class: type[serializers.Serializer], data: Any) -> dict:
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


def storable(value: str) -> bool:
    """Whether a reference could be stored at all (length, and no NUL, which PostgreSQL refuses)."""
    return len(value) <= MAX_IDENTIFIER and "\x00" not in value


def path_identifier(value: str, code: str, what: str) -> str:
    """A reference taken from the URL; one that no row could hold is simply not found."""
    if not storable(value):
        raise ApiError(404, code, f"No {what} {value[:MAX_IDENTIFIER]!r}")
    return value


@extend_schema(exclude=True)
class RouteNotFoundApi(V1Api):
    """Any other path under /api/v1/: a 404 in the envelope rather than Django's HTML page."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    throttle_classes: list = []

    def http_method_not_allowed(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        raise ApiError(404, "not_found", f"No endpoint {request.path}")


class PageNumbers(pagination.PageNumberPagination):
    """Bounded collections (batches, stock): numbered pages with a total count."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class ReadApi(V1Api):
    """A read of a read model (through readmodels.selectors) or of the event log."""

    pagination_class: type[pagination.BasePagination] = PageNumbers

    def paginated(self, rows: Any, serializer_class: type[serializers.Serializer]) -> Response:
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(rows, self.request, view=self)
        return paginator.get_paginated_response(serializer_class(page, many=True).data)


class WriteApi(V1Api):
    """A write: dispatch one command through the bus, under the request's correlation id.

    With `Prefer: wait=<seconds>` the response waits (at most that long, capped by
    ALLOCATION_READ_YOUR_WRITES_TIMEOUT) until the command's read-model projections are
    applied, and says so with `Preference-Applied`.
    """

    # Set once the command has been handed to the bus: from then on the answer is the
    # command's, and an Idempotency-Key keeps it (see idempotency.py).
    command_dispatched = False

    def run(self, command: commands.Command) -> Any:
        self.command_dispatched = True
        wait = preferred_wait(self.request.headers.get("Prefer", ""))
        if wait is not None:
            wait = min(wait, settings.ALLOCATION_READ_YOUR_WRITES_TIMEOUT)
        result, applied = run_command(command, self.correlation_id, wait)
        if applied:
            self.headers["Preference-Applied"] = f"wait={format_seconds(wait)}"
        return result


def preferred_wait(prefer: str) -> float | None:
    """The `wait` preference of a Prefer header (RFC 7240), or None; invalid ones are ignored."""
    for preference in prefer.split(","):
        token, _, value = preference.split(";")[0].strip().partition("=")
        if token.strip().lower() != "wait":
            continue
        try:
            seconds = float(value.strip().strip('"'))
        except ValueError:
            return None
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def format_seconds(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"
