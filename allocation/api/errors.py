"""How errors reach API clients: a 4xx with a message, never a 500 for bad input."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from allocation import database
from allocation.domain import model
from allocation.unit_of_work import TransactionConflict

DOMAIN_ERROR_STATUS: dict[type[model.DomainError], int] = {
    model.DuplicateBatch: status.HTTP_409_CONFLICT,
    model.AllocationConflict: status.HTTP_409_CONFLICT,
    model.NotAllocated: status.HTTP_404_NOT_FOUND,
}


def domain_error_status(exc: model.DomainError) -> int:
    return DOMAIN_ERROR_STATUS.get(type(exc), status.HTTP_400_BAD_REQUEST)


def first_message(detail: Any) -> str:
    """Flatten DRF's error detail (dicts and lists of messages) into one readable line."""
    if isinstance(detail, dict):
        return "; ".join(
            f"{field}: {first_message(value)}"
            if field != "non_field_errors"
            else first_message(value)
            for field, value in detail.items()
        )
    if isinstance(detail, list):
        return "; ".join(first_message(item) for item in detail)
    return str(detail)


# A request that could not get through to the database: (code, message, Retry-After seconds).
# Its outcome is unknown only if the connection broke during COMMIT; a retry is safe either
# way (the book's allocate and v1's Idempotency-Key make it so).
PRODUCT_BUSY = ("busy", "The product is busy with other writes; try again.", 1)
DATABASE_BUSY = ("busy", "The database is busy (a lock or a statement timed out); try again.", 1)
DATABASE_UNAVAILABLE = ("database_unavailable", "The database is unavailable; try again.", 2)


def database_trouble(exc: Exception) -> tuple[str, str, int] | None:
    """The 503 answer for an exception that says the database is busy or unreachable."""
    if isinstance(exc, TransactionConflict):
        return PRODUCT_BUSY
    if database.busy(exc):
        return DATABASE_BUSY
    if database.unavailable(exc):
        return DATABASE_UNAVAILABLE
    return None


def compat_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The book-compatible error body, `{"message": ...}`, for every error."""
    if isinstance(exc, model.DomainError):
        return Response({"message": str(exc)}, status=domain_error_status(exc))
    if isinstance(exc, RequestDataTooBig):
        return Response({"message": str(exc)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if trouble := database_trouble(exc):
        _code, message, retry_after = trouble
        return Response(
            {"message": message},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(retry_after)},
        )
    response = exception_handler(exc, context)
    if response is not None:
        response.data = {"message": first_message(response.data)}
    return response
