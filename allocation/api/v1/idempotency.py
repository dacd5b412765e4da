"""`Idempotency-Key` on /api/v1 POSTs: a retried request gets the first answer again.

The first request with a key (per user) runs its command; its answer (status and body) is then
stored, in its own transaction, right after the command. A request with the same key and the
same method, path and JSON body gets that stored answer back, marked `Idempotent-Replayed:
true`, without running anything; the same key with another request is refused with 422
`idempotency_key_reused`.

What is stored: every answer given once the command was handed to the bus, successes and
domain refusals alike (201, 409 out_of_stock, 409 duplicate_batch, ...). Not stored: answers
given before that (400 validation, 401, 403, 413, 415, 429), which a retry reproduces anyway,
and 503 busy, which asks the client to retry and must not be replayed.

The race: two first requests with one key, at once, both find no record and both run their
command. The domain makes the second run harmless for these POSTs: allocating the same line
again reports the same batch and changes nothing, and creating the same batch again is refused
as a duplicate. The unique constraint on (user, key) then lets exactly one record in; the
loser's insert fails and it answers with the winner's stored response (or 422 when the two
requests differed), so both clients see one and the same answer. The only trace the loser can
leave is an extra `OutOfStock` event when both found the sku out of stock.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, IntegrityError, transaction
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from allocation.api.v1.errors import ApiError
from allocation.models import IdempotencyRecord

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255


def idempotent(method: Callable[..., Response]) -> Callable[..., Response]:
    """Give a WriteApi POST method the `Idempotency-Key` behaviour described above."""

    @functools.wraps(method)
    def respond(view: Any, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request.headers.get(HEADER)
        if key is None:
            return method(view, request, *args, **kwargs)
        check_key(key)
        fingerprint = request_fingerprint(request)
        record = IdempotencyRecord.objects.filter(user=request.user, key=key).first()
        if record is not None:
            return replay(record, fingerprint)
        try:
            response = method(view, request, *args, **kwargs)
        except Exception as exc:
            if not view.command_dispatched:
                raise
            response = view.handle_exception(exc)  # the command's own error answer
        if not view.command_dispatched or response.status_code >= 500:
            return response
        return store(request, key, fingerprint, response)

    return respond


def check_key(key: str) -> None:
    if not (0 < len(key) <= MAX_KEY_LENGTH and key.isascii() and key.isprintable()):
        raise ApiError(
            status.HTTP_400_BAD_REQUEST,
            "invalid_idempotency_key",
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
        )


def request_fingerprint(request: Request) -> str:
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def replay(record: IdempotencyRecord, fingerprint: str) -> Response:
    if record.fingerprint != fingerprint:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            f"{HEADER} {record.key!r} was already used for another request.",
        )
    return Response(record.body, status=record.status, headers={REPLAYED_HEADER: "true"})


def store(request: Request, key: str, fingerprint: str, response: Response) -> Response:
    try:
        with transaction.atomic():
            IdempotencyRecord.objects.create(
                user=request.user,
                key=key,
                fingerprint=fingerprint,
                status=response.status_code,
                body=response.data,
            )
    except IntegrityError:
        # A concurrent first request with this key stored its answer first: give that one.
        return replay(IdempotencyRecord.objects.get(user=request.user, key=key), fingerprint)
    except DatabaseError as exc:
        # The command has committed: its answer stands even though it could not be kept. A
        # retry with this key runs the command again, which these commands make harmless.
        logger.warning("could not store the answer to %s %r: %s", HEADER, key, exc)
    return response
