"""Allocation commands: `POST /api/v1/allocations` (Allocate) and
`DELETE /api/v1/orders/<orderid>/allocations/<sku>` (CancelAllocation)."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from allocation.api.v1.base import WriteApi, path_identifier
from allocation.api.v1.errors import OutOfStockError
from allocation.api.v1.idempotency import idempotent
from allocation.api.v1.permissions import ALLOCATE, CANCEL_ALLOCATION, requires
from allocation.api.v1.schema import POST_HEADERS, WRITE_ERRORS, WRITE_HEADERS, error_responses
from allocation.api.v1.serializers import AllocationCreateSerializer, AllocationSerializer
from allocation.domain import commands
from allocation.domain.model import InvalidSku, NotAllocated


class AllocationCreateApi(WriteApi):
    """Allocate an order line to the preferred batch that fits (Allocate).

    Allocating a line again with the same quantity reports the same batch; with another
    quantity it is a 409 allocation_conflict. When no batch fits, nothing is allocated, the
    OutOfStock event is recorded (and notified), and the answer is 409 out_of_stock.
    """

    @extend_schema(
        operation_id="allocation_create",
        summary="Allocate an order line",
        request=AllocationCreateSerializer,
        responses={
            201: AllocationSerializer,
            **error_responses(*WRITE_ERRORS, 409, 422),
        },
        parameters=POST_HEADERS,
        tags=["allocations"],
    )
    @requires(ALLOCATE)
    @idempotent
    def post(self, request: Request) -> Response:
        data = self.validated(AllocationCreateSerializer, request.data)
        batchref = self.run(commands.Allocate(data["orderid"], data["sku"], data["qty"]))
        if batchref is None:
            raise OutOfStockError(data["sku"])
        return Response({**data, "batchref": batchref}, status=201)


class AllocationCancelApi(WriteApi):
    """Cancel an order line's allocation (CancelAllocation): its stock is freed and the line
    is not reallocated."""

    @extend_schema(
        operation_id="allocation_cancel",
        summary="Cancel an allocation",
        request=None,
        responses={
            204: OpenApiResponse(description="Cancelled"),
            **error_responses(*WRITE_ERRORS, 404),
        },
        parameters=WRITE_HEADERS,
        tags=["allocations"],
    )
    @requires(CANCEL_ALLOCATION)
    def delete(self, request: Request, orderid: str, sku: str) -> Response:
        orderid = path_identifier(orderid, "not_allocated", "order")
        sku = path_identifier(sku, "not_allocated", "allocation of sku")
        try:
            self.run(commands.CancelAllocation(orderid, sku))
        except InvalidSku:
            # No such sku, so certainly no such allocation: the resource is simply not there.
            raise NotAllocated(orderid, sku) from None
        return Response(status=204)
