"""Operational reads of the outbox: `GET /api/v1/events` and `GET /api/v1/deliveries`."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import pagination
from rest_framework.request import Request
from rest_framework.response import Response

from allocation.api.v1 import queries
from allocation.api.v1.base import ReadApi
from allocation.api.v1.schema import READ_ERRORS, error_responses
from allocation.api.v1.serializers import (
    DeliveryFilterSerializer,
    DeliveryStatusSerializer,
    EventFilterSerializer,
    EventLogEntrySerializer,
)


class LogCursor(pagination.CursorPagination):
    """Logs grow without bound: cursor pages, stable while rows are added, with no count."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class EventCursor(LogCursor):
    ordering = ("occurred_at", "position", "id")


class DeliveryCursor(LogCursor):
    ordering = ("id",)


class EventListApi(ReadApi):
    """The event log, oldest first: every domain event with its sku, product version,
    payload and the correlation and causation ids that tie a chain together."""

    pagination_class = EventCursor

    @extend_schema(
        operation_id="event_list",
        summary="List the event log",
        parameters=[EventFilterSerializer],
        responses={200: EventLogEntrySerializer(many=True), **error_responses(*READ_ERRORS, 400)},
        tags=["operations"],
    )
    def get(self, request: Request) -> Response:
        filters = self.validated(EventFilterSerializer, request.query_params)
        return self.paginated(queries.event_log(**filters), EventLogEntrySerializer)


class DeliveryListApi(ReadApi):
    """Delivery status per (event, handler): pending, done, dead (out of attempts, with its
    last error) or discarded, oldest first."""

    pagination_class = DeliveryCursor

    @extend_schema(
        operation_id="delivery_list",
        summary="List deliveries and their status",
        parameters=[DeliveryFilterSerializer],
        responses={200: DeliveryStatusSerializer(many=True), **error_responses(*READ_ERRORS, 400)},
        tags=["operations"],
    )
    def get(self, request: Request) -> Response:
        filters = self.validated(DeliveryFilterSerializer, request.query_params)
        return self.paginated(queries.delivery_status(**filters), DeliveryStatusSerializer)
