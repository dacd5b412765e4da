"""The read side of /api/v1: batches, order allocations and stock, from the read models.

Every answer comes from readmodels.selectors; the write side's tables are never read here.
The read models follow the write side after commit, so a client that must see its own write
asks the write for `Prefer: wait=<seconds>`.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from allocation.api.v1.base import ReadApi, path_identifier, storable
from allocation.api.v1.errors import ApiError
from allocation.api.v1.schema import READ_ERRORS, error_responses
from allocation.api.v1.serializers import AllocationSerializer, ReferenceField
from readmodels import selectors


class BatchFilterSerializer(serializers.Serializer):
    sku = ReferenceField(required=False, help_text="Only this sku's batches")


class BatchStockSerializer(serializers.Serializer):
    ref = serializers.CharField(source="reference")
    sku = serializers.CharField()
    eta = serializers.DateField(allow_null=True)
    purchased = serializers.IntegerField()
    allocated = serializers.IntegerField()
    available = serializers.IntegerField()


class BatchLineSerializer(serializers.Serializer):
    orderid = serializers.CharField()
    sku = serializers.CharField()
    qty = serializers.IntegerField()


class BatchDetailSerializer(BatchStockSerializer):
    lines = BatchLineSerializer(many=True, help_text="The order lines allocated to the batch")


class SkuStockSerializer(serializers.Serializer):
    sku = serializers.CharField()
    purchased = serializers.IntegerField()
    allocated = serializers.IntegerField()
    available = serializers.IntegerField()
    batch_count = serializers.IntegerField(source="batches")
    next_eta = serializers.DateField(
        allow_null=True, help_text="The earliest eta of the sku's batches; null when none"
    )


class BatchListApi(ReadApi):
    """Batches with their purchased, allocated and available quantities, by sku and eta."""

    @extend_schema(
        operation_id="batch_list",
        summary="List batches",
        parameters=[BatchFilterSerializer],
        responses={200: BatchStockSerializer(many=True), **error_responses(*READ_ERRORS, 400)},
        tags=["batches"],
    )
    def get(self, request: Request) -> Response:
        filters = self.validated(BatchFilterSerializer, request.query_params)
        return self.paginated(selectors.batches(filters.get("sku")), BatchStockSerializer)


class BatchDetailApi(ReadApi):
    """A batch: its quantities, eta and the order lines allocated to it."""

    @extend_schema(
        operation_id="batch_detail",
        summary="Show a batch",
        responses={200: BatchDetailSerializer, **error_responses(*READ_ERRORS, 404)},
        tags=["batches"],
    )
    def get(self, request: Request, ref: str) -> Response:
        found = selectors.batch(path_identifier(ref, "unknown_batch", "batch"))
        if found is None:
            raise ApiError(404, "unknown_batch", f"Unknown batch {ref}")
        return Response(BatchDetailSerializer(found).data)


class OrderAllocationListApi(ReadApi):
    """An order's allocated lines, by sku; an order with none has an empty list."""

    pagination_class = None  # an order has a handful of lines: a plain list, as documented

    @extend_schema(
        operation_id="order_allocation_list",
        summary="List an order's allocations",
        responses={200: AllocationSerializer(many=True), **error_responses(*READ_ERRORS)},
        tags=["allocations"],
    )
    def get(self, request: Request, orderid: str) -> Response:
        if not storable(orderid):
            return Response([])
        lines = [{"orderid": orderid, **line} for line in selectors.order_lines(orderid)]
        return Response(AllocationSerializer(lines, many=True).data)


class StockListApi(ReadApi):
    """Stock per sku: purchased, allocated, available, batch count and next eta."""

    @extend_schema(
        operation_id="stock_list",
        summary="List stock per sku",
        responses={200: SkuStockSerializer(many=True), **error_responses(*READ_ERRORS)},
        tags=["stock"],
    )
    def get(self, request: Request) -> Response:
        return self.paginated(selectors.stock_by_sku(), SkuStockSerializer)


class StockDetailApi(ReadApi):
    """A sku's stock: purchased, allocated, available, batch count and next eta."""

    @extend_schema(
        operation_id="stock_detail",
        summary="Show a sku's stock",
        responses={200: SkuStockSerializer, **error_responses(*READ_ERRORS, 404)},
        tags=["stock"],
    )
    def get(self, request: Request, sku: str) -> Response:
        found = selectors.stock_for_sku(path_identifier(sku, "invalid_sku", "sku"))
        if found is None:
            raise ApiError(404, "invalid_sku", f"Invalid sku {sku}")
        return Response(SkuStockSerializer(found).data)
