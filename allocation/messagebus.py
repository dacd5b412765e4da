"""The command bus: routes a command to its one handler, in a unit of work of its own.

The bus holds configuration only (routing and dependencies); everything that belongs to one
call lives in that call's unit of work, so one bus is shared safely by every thread. What
happens to the events a command records is the delivery runner's business
(allocation/delivery.py): the bus only rings `wake` once they have committed.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from allocation.domain import commands
from allocation.domain.model import DomainError
from allocation.metrics import COMMANDS
from allocation.tracing import traced
from allocation.unit_of_work import (
    AbstractUnitOfWork,
    MessageContext,
    NewDelivery,
    Receipt,
    TransactionConflict,
)

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]
# Dependencies that differ per call: the call's unit of work, and for an event handler the
# event's id (the dedup key of external side effects). The rest come from bootstrap.
PER_CALL = ("uow", "event_id")


def inject(handler: Handler, dependencies: Mapping[str, Any], name: str | None = None) -> Handler:
    """Bind a handler's dependencies by parameter name; refuse one that nobody provides."""
    name = name or f"{handler.__module__}.{handler.__qualname__}"
    _message, *params = inspect.signature(handler).parameters
    missing = [p for p in params if p not in dependencies and p not in PER_CALL]
    if missing:
        raise TypeError(f"{name} needs {missing}, which bootstrap does not provide")
    static = {p: dependencies[p] for p in params if p in dependencies}
    per_call = [p for p in params if p in PER_CALL]

    def call(message: Any, **call_values: Any) -> Any:
        return handler(message, **static, **{p: call_values[p] for p in per_call})

    call.__name__ = name
    return call


class MessageBus:
    def __init__(
        self,
        start_uow: Callable[..., AbstractUnitOfWork],
        command_handlers: Mapping[type[commands.Command], Handler]
        | Iterable[tuple[type[commands.Command], Handler]],
        subscriptions: Mapping[str, tuple[str, ...]],
        dependencies: Mapping[str, Any],
        wake: Callable[[list[NewDelivery]], None] | None = None,
        command_retries: int = 5,
    ):
        """`subscriptions`: event type name -> the names of its handlers, one delivery each.
        `wake`: told, after each commit, the deliveries it wrote (a worker should look)."""
        self.start_uow = start_uow
        self.subscriptions = subscriptions
        self.wake = wake
        self.command_retries = command_retries
        self.command_handlers: dict[type[commands.Command], Handler] = {}
        pairs = (
            command_handlers.items() if isinstance(command_handlers, Mapping) else command_handlers
        )
        for command_type, handler in pairs:
            if command_type in self.command_handlers:
                raise ValueError(
                    f"{command_type.__name__} already goes to "
                    f"{self.command_handlers[command_type].__name__}; a command has one handler"
                )
            self.command_handlers[command_type] = inject(handler, dependencies)

    def handle(
        self,
        command: commands.Command,
        correlation_id: str | None = None,
        receipt: Receipt | None = None,
    ) -> Any:
        """Run a command's handler in a transaction of its own and return its result; its
        errors reach the caller.

        A command that lost a race for its product (a serialisation failure, a stale version)
        is retried a bounded number of times with a fresh unit of work. Its events leave once
        the transaction has committed; `receipt`, if given, is told the deliveries it wrote.
        """
        context = MessageContext(
            correlation_id=correlation_id or str(uuid.uuid4()), causation_id=str(uuid.uuid4())
        )
        for attempt in range(self.command_retries + 1):
            uow = self.start_uow(self.subscriptions, context, self._committed_to(receipt))
            try:
                with traced(
                    correlation_id=context.correlation_id,
                    causation_id=context.causation_id,
                    handling=type(command).__name__,
                    sku=getattr(command, "sku", None),
                ):
                    result = self.run_command(command, uow)
            except TransactionConflict:
                if attempt == self.command_retries:
                    COMMANDS.labels(type(command).__name__, "conflict").inc()
                    raise
                logger.info("retrying %s after a conflict (attempt %d)", command, attempt + 1)
                time.sleep(random.uniform(0, 0.005 * 2**attempt))
                continue
            except Exception as exc:
                outcome = "rejected" if isinstance(exc, DomainError) else "failed"
                COMMANDS.labels(type(command).__name__, outcome).inc()
                raise
            COMMANDS.labels(type(command).__name__, "ok").inc()
            return result
        raise AssertionError("unreachable")

    def run_command(self, command: commands.Command, uow: AbstractUnitOfWork) -> Any:
        """Run the command's handler in `uow` (a delivery's follow-up commands join its
        transaction this way)."""
        try:
            handler = self.command_handlers[type(command)]
        except KeyError:
            raise LookupError(f"no handler for {type(command).__name__}") from None
        return handler(command, uow=uow)

    def _committed_to(self, receipt: Receipt | None) -> Callable[[list[NewDelivery]], None]:
        def committed(deliveries: list[NewDelivery]) -> None:
            if receipt is not None:
                receipt.deliveries = list(deliveries)
            self.wake_workers(deliveries)

        return committed

    def wake_workers(self, deliveries: Sequence[object]) -> None:
        """Tell the transport that committed deliveries (or delivery ids) are due; if that
        fails, the sweeper finds them (they are due from their commit on)."""
        if not deliveries or self.wake is None:
            return
        try:
            self.wake(deliveries)
        except Exception as exc:
            logger.warning(
                "could not wake a worker for %d deliveries (%s: %s); the sweeper will deliver them",
                len(deliveries),
                type(exc).__name__,
                exc,
            )
