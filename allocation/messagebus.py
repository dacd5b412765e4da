"""The message bus: routes a command to its one handler and an event delivery to its handler.

The bus holds configuration only (routing and dependencies); everything that belongs to one
call lives in that call's unit of work, so one bus is shared safely by every thread.
"""

from __future__ import annotations

import inspect
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from allocation.domain import commands, events
from allocation.domain.model import DomainError
from allocation.metrics import COMMANDS, DELIVERIES_RUN
from allocation.tracing import traced
from allocation.unit_of_work import (
    AbstractUnitOfWork,
    MessageContext,
    PendingDelivery,
    TransactionConflict,
)

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]
# Dependencies that differ per call: the call's unit of work, and for an event handler the
# event's id (the dedup key of external side effects). The rest come from bootstrap.
PER_CALL = ("uow", "event_id")


def sku_of(delivery: PendingDelivery) -> str:
    return delivery.event.sku


def handler_name(handler: Handler) -> str:
    """The stable name a delivery row stores for its handler."""
    return f"{handler.__module__}.{handler.__qualname__}"


class MessageBus:
    def __init__(
        self,
        start_uow: Callable[..., AbstractUnitOfWork],
        command_handlers: Mapping[type[commands.Command], Handler]
        | Iterable[tuple[type[commands.Command], Handler]],
        event_handlers: Mapping[type[events.Event], Iterable[Handler]],
        dependencies: Mapping[str, Any],
        dispatch: Callable[[list[int]], None] | None = None,
        command_retries: int = 5,
        transaction_groups: Iterable[Iterable[Handler]] = (),
        on_delivered: Callable[[list[PendingDelivery]], None] | None = None,
    ):
        self.start_uow = start_uow
        # Told, after each commit, which deliveries it made done (best effort: it may fail).
        self.on_delivered = on_delivered
        self.transaction_groups = [
            frozenset(handler_name(h) for h in group) for group in transaction_groups
        ]
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
            self.command_handlers[command_type] = self._inject(handler, dependencies)
        self.event_handlers: dict[str, Handler] = {}
        self.subscriptions: dict[str, tuple[str, ...]] = {}
        for event_type, handlers in event_handlers.items():
            names = tuple(handler_name(h) for h in handlers)
            self.subscriptions[event_type.__name__] = names
            for name, h in zip(names, handlers, strict=True):
                self.event_handlers[name] = self._inject(h, dependencies)
        self.dispatch = dispatch or self.deliver_all
        self.command_retries = command_retries

    @staticmethod
    def _inject(handler: Handler, dependencies: Mapping[str, Any]) -> Handler:
        """Bind a handler's dependencies by parameter name; refuse one that nobody provides."""
        _message, *params = inspect.signature(handler).parameters
        missing = [p for p in params if p not in dependencies and p not in PER_CALL]
        if missing:
            raise TypeError(
                f"{handler_name(handler)} needs {missing}, which bootstrap does not provide"
            )
        static = {p: dependencies[p] for p in params if p in dependencies}
        per_call = [p for p in params if p in PER_CALL]

        def call(message: Any, **call_values: Any) -> Any:
            return handler(message, **static, **{p: call_values[p] for p in per_call})

        call.__name__ = handler_name(handler)
        return call

    # --- commands -----------------------------------------------------------------------------

    def handle(self, command: commands.Command, correlation_id: str | None = None) -> Any:
        """Run a command's handler and return its result; its errors reach the caller.

        A command that lost a race for its product (a serialisation failure, a stale version)
        is retried a bounded number of times with a fresh unit of work. Its events are handed
        to `dispatch` once the transaction has committed.
        """
        context = MessageContext(
            correlation_id=correlation_id or str(uuid.uuid4()), causation_id=str(uuid.uuid4())
        )
        for attempt in range(self.command_retries + 1):
            uow = self.start_uow(self.subscriptions, context)
            try:
                with traced(
                    correlation_id=context.correlation_id,
                    causation_id=context.causation_id,
                    handling=type(command).__name__,
                    sku=getattr(command, "sku", None),
                ):
                    result = self._run_command(command, uow)
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
            self.dispatch_committed(uow.new_deliveries)
            return result
        raise AssertionError("unreachable")

    def _run_command(self, command: commands.Command, uow: AbstractUnitOfWork) -> Any:
        try:
            handler = self.command_handlers[type(command)]
        except KeyError:
            raise LookupError(f"no handler for {type(command).__name__}") from None
        return handler(command, uow=uow)

    # --- event deliveries ---------------------------------------------------------------------

    def deliver(self, delivery_id: int) -> None:
        self.deliver_all([delivery_id])

    def deliver_all(self, delivery_ids: list[int]) -> None:
        """Run (event, handler) deliveries, each once, each succeeding or failing on its own.

        A delivery's database effects, the commands its handler issues and its done-mark
        commit together, so running a delivery twice changes nothing; one that is done, dead,
        or running in another worker is left alone. A failure is recorded on the delivery and
        retried later with backoff, or parked as dead.

        First each delivery's attempt is counted, committed at once: a handler that kills its
        process (a hard time limit, memory) is given up on too. Then, group by group, the
        deliveries of each of `transaction_groups` (fast handlers: the projections, then the
        Redis publishes) run in one transaction, a savepoint each; a handler in no group runs
        in a transaction of its own, so a slow one never holds back another's commit.
        """
        started = self.start_uow(self.subscriptions, None).start_deliveries(delivery_ids)
        for group in self.transaction_groups:
            # In sku order: two workers' batches then take the read model's rows in the same
            # order, so one waits for the other instead of deadlocking with it.
            together = sorted((d for d in started if d.handler in group), key=sku_of)
            if together:
                self._run_together(together)
        grouped = frozenset().union(*self.transaction_groups)
        for delivery in started:
            if delivery.handler not in grouped:
                self._run_alone(delivery)

    def _run_together(self, deliveries: list[PendingDelivery]) -> None:
        if len(deliveries) == 1:
            self._run_alone(deliveries[0])
            return
        uow = self.start_uow(self.subscriptions, None)
        done, failed = [], []
        try:
            with uow:
                for delivery in uow.deliveries.claim(deliveries):
                    try:
                        with uow.savepoint():
                            self._run_delivery(delivery, uow)
                    except TransactionConflict:
                        # A deadlock with another worker's batch: give the whole batch up now.
                        # Going on would keep its locks, and deadlock again (a second each).
                        raise
                    except Exception as exc:
                        logger.exception("delivery %s (%s) failed", delivery.id, delivery.handler)
                        self._failed(delivery, exc, uow)
                        failed.append(delivery)
                    else:
                        done.append(delivery)
                uow.deliveries.mark_done([d.id for d in done])
                uow.commit()
        except Exception as exc:
            # The transaction as a whole failed (it lost a race with another worker's batch,
            # or its connection) and its locks went with it: run each delivery on its own.
            logger.info("batch of %d failed (%s); each runs alone", len(deliveries), exc)
            for delivery in deliveries:
                self._run_alone(delivery)
            return
        for delivery in failed:
            DELIVERIES_RUN.labels(delivery.handler, "failed").inc()
        for delivery in done:
            DELIVERIES_RUN.labels(delivery.handler, "done").inc()
        self._committed(uow, done)

    def _run_alone(self, delivery: PendingDelivery, again_on_conflict: bool = True) -> None:
        """One delivery in its own transaction; if it fails, that transaction is rolled back
        whole (no savepoint needed) and the failure recorded in another. One that lost a race
        (a deadlock) runs again at once, once, before it counts as failed."""
        uow = self.start_uow(self.subscriptions, None)
        ran = False
        try:
            with uow:
                if uow.deliveries.claim([delivery]):
                    self._run_delivery(delivery, uow)
                    uow.deliveries.mark_done([delivery.id])
                    uow.commit()
                    ran = True
        except Exception as exc:
            if isinstance(exc, TransactionConflict) and again_on_conflict:
                logger.info("delivery %s lost a race (%s); running it again", delivery.id, exc)
                self._run_alone(delivery, again_on_conflict=False)
                return
            logger.exception("delivery %s (%s) failed", delivery.id, delivery.handler)
            failure_uow = self.start_uow(self.subscriptions, None)
            try:
                with failure_uow:
                    self._failed(delivery, exc, failure_uow)
                    failure_uow.commit()
            except Exception:
                logger.exception("could not record the failure of delivery %s", delivery.id)
            DELIVERIES_RUN.labels(delivery.handler, "failed").inc()
            return
        if ran:
            DELIVERIES_RUN.labels(delivery.handler, "done").inc()
            self._committed(uow, [delivery])

    def _failed(self, delivery: PendingDelivery, exc: Exception, uow: AbstractUnitOfWork) -> None:
        # The domain refusing a follow-up command is an answer, not a fault: the same command
        # would be refused again, so it is not retried.
        refused = isinstance(exc, DomainError)
        uow.deliveries.record_failure(delivery.id, exc, final=refused)

    def _committed(self, uow: AbstractUnitOfWork, done: list[PendingDelivery]) -> None:
        self.dispatch_committed(uow.new_deliveries)
        if done and self.on_delivered is not None:
            try:
                self.on_delivered(done)
            except Exception:
                logger.warning("on_delivered failed for %s", [d.id for d in done], exc_info=True)

    def _run_delivery(self, delivery: PendingDelivery, uow: AbstractUnitOfWork) -> None:
        uow.context = MessageContext(
            correlation_id=delivery.correlation_id, causation_id=delivery.event_id
        )
        with traced(
            correlation_id=delivery.correlation_id,
            causation_id=delivery.event_id,
            handling=f"{type(delivery.event).__name__} -> {delivery.handler}",
            sku=delivery.event.sku,
        ):
            handler = self._event_handler(delivery.handler)
            follow_ups = handler(delivery.event, uow=uow, event_id=delivery.event_id)
            for command in follow_ups or ():
                self._run_command(command, uow)

    def _event_handler(self, name: str) -> Handler:
        try:
            return self.event_handlers[name]
        except KeyError:
            raise LookupError(f"no handler named {name} is subscribed in this deployment") from None

    def dispatch_committed(self, delivery_ids: list[int]) -> None:
        """Hand committed deliveries to the transport; if that fails, the sweeper delivers them."""
        if not delivery_ids:
            return
        try:
            self.dispatch(delivery_ids)
        except Exception as exc:
            logger.warning(
                "could not dispatch deliveries %s (%s: %s); the sweeper will deliver them",
                delivery_ids,
                type(exc).__name__,
                exc,
            )
