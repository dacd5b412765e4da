"""The /api/v1 error envelope: `{"error": {"code", "message", "details"}}`, always a 4xx or 503.

`code` is machine-readable and stable; `message` is for people; `details` holds the field
errors of a request that failed validation (`{"qty": ["..."]}`), and is `{}` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from allocation.api.errors import database_trouble, first_message
from allocation.domain import model


class ApiError(Exception):
    """An error the API itself raises, with its code and status."""

    def __init__(self, status_code: int, code: str, message: str, details: Any = None):
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or {}


class OutOfStockError(ApiError):
    def __init__(self, sku: str):
        super().__init__(status.HTTP_409_CONFLICT, "out_of_stock", f"Out of stock for sku {sku}")


@dataclass(frozen=True)
class DomainErrorKind:
    code: str
    status: int
    field: str | None = None  # the request field the error is about, for `details`


DOMAIN_ERRORS: dict[type[model.DomainError], DomainErrorKind] = {
    model.InvalidSku: DomainErrorKind("invalid_sku", status.HTTP_400_BAD_REQUEST, "sku"),
    model.UnknownBatch: DomainErrorKind("unknown_batch", status.HTTP_404_NOT_FOUND),
    model.DuplicateBatch: DomainErrorKind("duplicate_batch", status.HTTP_409_CONFLICT, "ref"),
    model.InvalidQuantity: DomainErrorKind("invalid_quantity", status.HTTP_400_BAD_REQUEST, "qty"),
    model.InvalidEta: DomainErrorKind("invalid_eta", status.HTTP_400_BAD_REQUEST, "eta"),
    model.AllocationConflict: DomainErrorKind("allocation_conflict", status.HTTP_409_CONFLICT),
    model.NotAllocated: DomainErrorKind("not_allocated", status.HTTP_404_NOT_FOUND),
}

# A request whose only invalid field is one of these gets the domain's code for it, the same
# code the domain's own check would give; any other validation failure is `validation_error`.
FIELD_CODES = {"qty": "invalid_quantity", "eta": "invalid_eta"}

# DRF's exceptions keep their own `default_code`, except these.
DRF_CODES = {
    exceptions.ValidationError: "validation_error",
    exceptions.ParseError: "malformed_json",
}


def envelope(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(
    status_code: int, code: str, message: str, details: Any = None, headers: Any = None
) -> Response:
    return Response(envelope(code, message, details), status=status_code, headers=headers)


def validation_code(details: Any) -> str:
    if isinstance(details, dict) and len(details) == 1:
        (field,) = details
        return FIELD_CODES.get(field, "validation_error")
    return "validation_error"


def v1_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Every error of a /api/v1 view, in the envelope. Unexpected errors stay 500s (re-raised)."""
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.details)
    if isinstance(exc, model.DomainError):
        kind = DOMAIN_ERRORS.get(type(exc), DomainErrorKind("invalid", 400))
        details = {kind.field: [str(exc)]} if kind.field else None
        return error_response(kind.status, kind.code, str(exc), details)
    if trouble := database_trouble(exc):
        code, message, retry_after = trouble
        return error_response(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            code,
            message,
            headers={"Retry-After": str(retry_after)},
        )
    if isinstance(exc, RequestDataTooBig):
        return error_response(
            status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "payload_too_large", str(exc)
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(*exc.args)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    response = exception_handler(exc, context)  # DRF's: status and headers (Retry-After, ...)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = envelope(validation_code(details), first_message(details), details)
        return response
    code = next((c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), exc.default_code)
    response.data = envelope(code, first_message(exc.detail))
    return response
