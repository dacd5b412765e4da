"""The book-compatible endpoints: `POST /add_batch` and `POST /allocate`.

They dispatch commands through the bus and, before answering, wait (bounded) for the read
models to reflect the write, so a client that reads straight away sees what it wrote. Each
needs the permission of its command, as the /api/v1 writes do (a 403 `{"message"}` otherwise).
"""

from __future__ import annotations

import logging
import uuid

from django.conf import settings
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from allocation.api.commands import run_command
from allocation.api.serializers import AddBatchCompatSerializer, AllocateCompatSerializer
from allocation.api.v1.permissions import ALLOCATE, CREATE_BATCH, CommandPermission, requires
from allocation.domain import commands

logger = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-ID"


def correlation_id(request: Request) -> str:
    given = request.headers.get(CORRELATION_HEADER, "").strip()
    return given[:64] if given else str(uuid.uuid4())


class CommandApi(APIView):
    serializer_class: type[serializers.Serializer]
    permission_classes = [CommandPermission]

    def handle(self, request: Request, command: commands.Command):
        """Run the command, then wait for its projections (read-your-writes)."""
        cid = correlation_id(request)
        timeout = settings.ALLOCATION_READ_YOUR_WRITES_TIMEOUT
        result, applied = run_command(command, cid, timeout)
        if not applied:
            logger.warning("read models not updated within %.1fs for %s", timeout, cid)
        return result

    def validated(self, request: Request) -> dict:
        serializer = self.serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class BatchAddCompatApi(CommandApi):
    """`POST /add_batch {"ref", "sku", "qty", "eta"}` -> 201."""

    serializer_class = AddBatchCompatSerializer

    @requires(CREATE_BATCH)
    def post(self, request: Request) -> Response:
        data = self.validated(request)
        eta = data["eta"].isoformat() if data["eta"] else None
        ref = self.handle(request, commands.CreateBatch(data["ref"], data["sku"], data["qty"], eta))
        return Response({"ref": ref}, status=201)


class AllocateCompatApi(CommandApi):
    """`POST /allocate {"orderid", "sku", "qty"}` -> 202, out of stock included."""

    serializer_class = AllocateCompatSerializer

    @requires(ALLOCATE)
    def post(self, request: Request) -> Response:
        data = self.validated(request)
        batchref = self.handle(request, commands.Allocate(**data))
        return Response({"batchref": batchref}, status=202)
