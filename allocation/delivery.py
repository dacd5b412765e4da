"""The delivery runner: a worker step takes due (event, handler) deliveries, from any number of
commits, and runs them, each succeeding or failing on its own.

A step (`run_due`):
1. takes up to `batch_size` due deliveries in one statement, which counts an attempt for each
   and leases them, committed at once (a handler that kills its process has used an attempt);
2. runs them group by group (`Group`), each group in one transaction: the read-model
   projections and the Redis publishes (bootstrap.TRANSACTION_GROUPS). A group with a
   `together` context applies its handlers' effects as sets when the context exits (one
   statement per table, one Redis pipeline) and marks them done in one statement; its handlers
   must be idempotent, since it takes no row lock per delivery;
3. runs every other delivery (email, reallocation) in a transaction of its own, holding its
   row lock, so that a slow one never holds back another's commit.

If a group's transaction fails as a whole, each of its deliveries runs again alone, so the one
that fails fails alone and gets its backoff. Deliveries of a group run in sku order: two
workers' steps then take the read model's rows in the same order, and one waits for the other
instead of deadlocking with it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from allocation import database
from allocation.domain.model import DomainError
from allocation.messagebus import Handler, MessageBus
from allocation.metrics import DELIVERIES_RUN
from allocation.tracing import traced
from allocation.unit_of_work import (
    AbstractUnitOfWork,
    MessageContext,
    PendingDelivery,
    TransactionConflict,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """Deliveries that share one transaction in a step.

    `together`, when given, opens a context inside which the handlers' calls only collect
    their effects, applied as sets when it exits (see the module's docstring).
    """

    handlers: frozenset[str]
    together: Callable[[], contextlib.AbstractContextManager[Any]] | None = None


@dataclass
class Step:
    """What one step did: how many deliveries it took, from how many chains (requests, as a
    rule), and which it could not finish because the database was unreachable (worth another
    try soon, not a backoff)."""

    taken: int = 0
    chains: int = 0
    interrupted: list[int] = field(default_factory=list)


def sku_of(delivery: PendingDelivery) -> str:
    return delivery.event.sku


class DeliveryRunner:
    def __init__(
        self,
        bus: MessageBus,
        event_handlers: Mapping[str, Handler],
        groups: Iterable[Group] = (),
        on_delivered: Callable[[list[PendingDelivery]], None] | None = None,
        batch_size: int = 500,
        ask_for_help: Callable[[], object] | None = None,
    ):
        """`event_handlers`: handler name -> the handler, dependencies injected.
        `on_delivered`: told, after each commit, which deliveries it made done (best effort).
        `ask_for_help`: after a full batch, start another worker step (by default: wake the
        workers as a commit does)."""
        self.bus = bus
        self.event_handlers = dict(event_handlers)
        self.groups = list(groups)
        self.on_delivered = on_delivered
        self.batch_size = batch_size
        self.ask_for_help = ask_for_help
        self._grouped = frozenset().union(*(g.handlers for g in self.groups))

    def _uow(self) -> AbstractUnitOfWork:
        return self.bus.start_uow(self.bus.subscriptions, None, self.bus.wake_workers)

    def run_due(self, also: Sequence[int] = (), limit: int | None = None) -> Step:
        """One worker step over the due deliveries (and `also`, due or not, if pending)."""
        limit = limit or self.batch_size
        taken = self._uow().take_due(limit, list(also))
        if len(taken) >= limit:
            # More may be due: let another worker process take the next ones meanwhile.
            self._ask_for_help(taken)
        return self.run(taken)

    def _ask_for_help(self, taken: list[PendingDelivery]) -> None:
        if self.ask_for_help is None:
            self.bus.wake_workers(taken)
            return
        try:
            self.ask_for_help()
        except Exception as exc:
            logger.warning("could not start another worker step (%s); the sweep will", exc)

    def deliver(self, delivery_ids: Sequence[int]) -> Step:
        """Run these deliveries now, if they are pending and no step holds them, and nothing
        else (for operators and tests: a step takes whatever is due)."""
        return self.run(self._uow().take_due(0, list(delivery_ids)))

    def run(self, taken: Sequence[PendingDelivery]) -> Step:
        """Run deliveries already taken (their attempts counted)."""
        step = Step(taken=len(taken), chains=len({d.correlation_id for d in taken}))
        for group in self.groups:
            members = sorted((d for d in taken if d.handler in group.handlers), key=sku_of)
            if members:
                step.interrupted += self._run_group(group, members)
        for delivery in taken:
            if delivery.handler not in self._grouped and not self._run_alone(delivery):
                step.interrupted.append(delivery.id)
        return step

    # --- a group -------------------------------------------------------------------------------

    def _run_group(self, group: Group, deliveries: list[PendingDelivery]) -> list[int]:
        if group.together is None:
            return self._run_in_savepoints(deliveries)
        uow = self._uow()
        try:
            with uow:
                with group.together():
                    for delivery in deliveries:
                        self._run_delivery(delivery, uow)
                uow.deliveries.mark_done([d.id for d in deliveries])
                uow.commit()
        except Exception as exc:
            # One of them failed, or the transaction as a whole (a lost race, a lost
            # connection): run each alone, so that the one at fault fails alone.
            logger.info("a set of %d deliveries failed (%s); each runs alone", len(deliveries), exc)
            return [d.id for d in deliveries if not self._run_alone(d)]
        self._delivered(deliveries, [])
        return []

    def _run_in_savepoints(self, deliveries: list[PendingDelivery]) -> list[int]:
        """Handlers with no set-based form: one transaction, a savepoint and a row lock each."""
        if len(deliveries) == 1:
            return [] if self._run_alone(deliveries[0]) else [deliveries[0].id]
        uow = self._uow()
        done, failed = [], []
        try:
            with uow:
                for delivery in uow.deliveries.lock(deliveries):
                    try:
                        with uow.savepoint():
                            self._run_delivery(delivery, uow)
                    except TransactionConflict:
                        # A deadlock with another worker's step: give the whole set up now.
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
            logger.info("a set of %d deliveries failed (%s); each runs alone", len(deliveries), exc)
            return [d.id for d in deliveries if not self._run_alone(d)]
        self._delivered(done, failed)
        return []

    # --- one delivery --------------------------------------------------------------------------

    def _run_alone(self, delivery: PendingDelivery, again_on_conflict: bool = True) -> bool:
        """One delivery in its own transaction, holding its row lock; if it fails, that
        transaction is rolled back whole and the failure recorded in another. One that lost a
        race (a deadlock) runs again at once, once, before it counts as failed.

        False when the database could not be reached: the delivery is neither done nor
        failed, and the caller may try it again once the database answers."""
        uow = self._uow()
        ran = False
        try:
            with uow:
                if uow.deliveries.lock([delivery]):
                    self._run_delivery(delivery, uow)
                    uow.deliveries.mark_done([delivery.id])
                    uow.commit()
                    ran = True
        except Exception as exc:
            if isinstance(exc, TransactionConflict) and again_on_conflict:
                logger.info("delivery %s lost a race (%s); running it again", delivery.id, exc)
                return self._run_alone(delivery, again_on_conflict=False)
            if database.unavailable(exc):
                logger.warning("delivery %s: the database is unavailable (%s)", delivery.id, exc)
                database.heal()
                return False
            logger.exception("delivery %s (%s) failed", delivery.id, delivery.handler)
            self._record_failure(delivery, exc)
            return True
        if ran:
            self._delivered([delivery], [])
        return True

    def _record_failure(self, delivery: PendingDelivery, exc: Exception) -> None:
        failure_uow = self._uow()
        try:
            with failure_uow:
                self._failed(delivery, exc, failure_uow)
                failure_uow.commit()
        except Exception:
            logger.exception("could not record the failure of delivery %s", delivery.id)
        DELIVERIES_RUN.labels(delivery.handler, "failed").inc()

    def _failed(self, delivery: PendingDelivery, exc: Exception, uow: AbstractUnitOfWork) -> None:
        # The domain refusing a follow-up command is an answer, not a fault: the same command
        # would be refused again, so it is not retried.
        uow.deliveries.record_failure(delivery.id, exc, final=isinstance(exc, DomainError))

    def _delivered(self, done: list[PendingDelivery], failed: list[PendingDelivery]) -> None:
        for delivery in failed:
            DELIVERIES_RUN.labels(delivery.handler, "failed").inc()
        for delivery in done:
            DELIVERIES_RUN.labels(delivery.handler, "done").inc()
        if done and self.on_delivered is not None:
            try:
                self.on_delivered(done)
            except Exception:
                logger.warning("on_delivered failed for %s", [d.id for d in done], exc_info=True)

    def _run_delivery(self, delivery: PendingDelivery, uow: AbstractUnitOfWork) -> None:
        with traced(
            correlation_id=delivery.correlation_id,
            causation_id=delivery.event_id,
            handling=f"{type(delivery.event).__name__} -> {delivery.handler}",
            sku=delivery.event.sku,
        ):
            # What the handler or its commands write joins the chain.
            uow.context = MessageContext(
                correlation_id=delivery.correlation_id, causation_id=delivery.event_id
            )
            follow_ups = self._handler(delivery.handler)(
                delivery.event, uow=uow, event_id=delivery.event_id
            )
            for command in follow_ups or ():
                self.bus.run_command(command, uow)

    def _handler(self, name: str) -> Handler:
        try:
            return self.event_handlers[name]
        except KeyError:
            raise LookupError(f"no handler named {name} is subscribed in this deployment") from None
