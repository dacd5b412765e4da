"""Who may do what on /api/v1: reads need a user, each write the permission of its command."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from rest_framework.permissions import SAFE_METHODS, BasePermission

# The command permissions (declared on Batch and Allocation Meta; migration 0003 gives them all
# to the group "allocators").
CREATE_BATCH = "allocation.create_batch"
CHANGE_BATCH_QUANTITY = "allocation.change_batch_quantity"
ALLOCATE = "allocation.allocate"
CANCEL_ALLOCATION = "allocation.cancel_allocation"
COMMAND_PERMISSIONS = (CREATE_BATCH, CHANGE_BATCH_QUANTITY, ALLOCATE, CANCEL_ALLOCATION)
ALLOCATORS_GROUP = "allocators"

F = TypeVar("F", bound=Callable)


def requires(permission: str) -> Callable[[F], F]:
    """Mark a view's write method with the permission of the command it dispatches."""

    def mark(method: F) -> F:
        method.required_permission = permission  # type: ignore[attr-defined]
        return method

    return mark


class CommandPermission(BasePermission):
    """Any authenticated user may read; a write needs the permission its method declares.

    The permission travels with the method rather than the view class, so that one URL can
    serve a read view and a write view together (see `routing.resource`). A write method that
    declares no permission is refused: writes fail closed.
    """

    message = "You do not have the permission this command needs."

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in SAFE_METHODS:
            return True
        handler = getattr(view, request.method.lower(), None)
        if handler is None:
            return True  # the view answers 405 Method Not Allowed
        required = getattr(handler, "required_permission", None)
        return required is not None and user.has_perm(required)
