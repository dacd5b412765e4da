"""How errors reach API clients: a 4xx with a message, never a 500 for bad input."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

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


def compat_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The book-compatible error body, `{"message": ...}`, for every error."""
    if isinstance(exc, model.DomainError):
        return Response({"message": str(exc)}, status=domain_error_status(exc))
    if isinstance(exc, RequestDataTooBig):
        return Response({"message": str(exc)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, TransactionConflict):
        return Response(
            {"message": "The product is busy; try again."},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    response = exception_handler(exc, context)
    if response is not None:
        response.data = {"message": first_message(response.data)}
    return response
