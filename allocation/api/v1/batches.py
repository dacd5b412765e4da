"""Batch commands: `POST /api/v1/batches` (CreateBatch), `PATCH /api/v1/batches/<ref>`."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from allocation.api.v1.base import WriteApi, path_identifier
from allocation.api.v1.idempotency import idempotent
from allocation.api.v1.permissions import CHANGE_BATCH_QUANTITY, CREATE_BATCH, requires
from allocation.api.v1.schema import POST_HEADERS, WRITE_ERRORS, WRITE_HEADERS, error_responses
from allocation.api.v1.serializers import (
    BatchCreateSerializer,
    BatchQuantityChangedSerializer,
    BatchQuantityChangeSerializer,
)
from allocation.domain import commands


class BatchCreateApi(WriteApi):
    """Create a batch of a sku (CreateBatch); a new sku gets its product."""

    @extend_schema(
        operation_id="batch_create",
        summary="Create a batch",
        request=BatchCreateSerializer,
        responses={
            201: BatchCreateSerializer,
            **error_responses(*WRITE_ERRORS, 409, 422),
        },
        parameters=POST_HEADERS,
        tags=["batches"],
    )
    @requires(CREATE_BATCH)
    @idempotent
    def post(self, request: Request) -> Response:
        data = self.validated(BatchCreateSerializer, request.data)
        eta = data["eta"].isoformat() if data["eta"] else None
        self.run(commands.CreateBatch(data["ref"], data["sku"], data["qty"], eta))
        return Response({**data, "eta": eta}, status=201)


class BatchQuantityChangeApi(WriteApi):
    """Change a batch's purchased quantity (ChangeBatchQuantity); lines that no longer fit
    are deallocated, latest first, and reallocated elsewhere when they can be."""

    @extend_schema(
        operation_id="batch_change_quantity",
        summary="Change a batch's quantity",
        request=BatchQuantityChangeSerializer,
        responses={
            200: BatchQuantityChangedSerializer,
            **error_responses(*WRITE_ERRORS, 404),
        },
        parameters=WRITE_HEADERS,
        tags=["batches"],
    )
    @requires(CHANGE_BATCH_QUANTITY)
    def patch(self, request: Request, ref: str) -> Response:
        ref = path_identifier(ref, "unknown_batch", "batch")
        data = self.validated(BatchQuantityChangeSerializer, request.data)
        self.run(commands.ChangeBatchQuantity(ref, data["qty"]))
        return Response({"ref": ref, "qty": data["qty"]})
