"""Units of work: one transaction per command or delivery, and the outbox written inside it."""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import DatabaseError, IntegrityError, transaction

from allocation.domain import events
from allocation.domain.model import Product
from allocation.outbox import DjangoDeliveryRepository, PendingDelivery
from allocation.repository import DjangoProductRepository, StaleProduct


class TransactionConflict(Exception):
    """The transaction lost a race with another writer; running the command again is safe."""


@dataclass(frozen=True)
class MessageContext:
    """Ties the events of a command to the chain that caused it (for logs and the event log)."""

    correlation_id: str
    causation_id: str


class ProductRepository(Protocol):
    seen: list[Product]

    def add(self, product: Product) -> None: ...

    def get(self, sku: str, orderid: str | None = None) -> Product | None:
        """The product, locked for this transaction, with the allocation of `orderid` if any."""

    def get_by_batchref(self, ref: str, keep: int = 0) -> Product | None:
        """The product of batch `ref`, locked, with the batch's latest lines beyond `keep` units."""

    def batch_exists(self, ref: str) -> bool: ...

    def save(self, product: Product) -> None: ...


class DeliveryRepository(Protocol):
    def add(
        self,
        new_events: list[events.Event],
        subscriptions: Mapping[str, tuple[str, ...]],
        context: MessageContext,
    ) -> list[int]:
        """Write the events to the event log, with one delivery per subscribed handler."""

    def start(self, delivery_ids: list[int]) -> list[PendingDelivery]:
        """Count an attempt for each pending delivery another worker does not hold, and park
        those already out of attempts as dead. Returns those to run, with their events.
        Atomic on its own: called outside a unit of work's transaction."""

    def claim(self, deliveries: list[PendingDelivery]) -> list[PendingDelivery]:
        """Lock those still pending, skipping any another worker holds."""

    def mark_done(self, delivery_ids: list[int]) -> None: ...

    def record_failure(self, delivery_id: int, error: BaseException, final: bool = False) -> None:
        """Keep the error; retry later with backoff, or park as dead when out of attempts or
        when the failure is `final` (a retry cannot help)."""


class AbstractUnitOfWork(abc.ABC):
    """`with uow:` opens the transaction; `uow.commit()` saves the products and their events.

    Leaving the block without `commit()` rolls back. A handler that runs inside another
    handler's unit of work (a follow-up command of a delivery) joins its transaction.
    """

    products: ProductRepository
    deliveries: DeliveryRepository

    def __init__(
        self, subscriptions: Mapping[str, tuple[str, ...]], context: MessageContext | None
    ):
        self.subscriptions = subscriptions
        self.context = context
        self.new_deliveries: list[int] = []
        self._depth = 0

    def __enter__(self) -> AbstractUnitOfWork:
        self._depth += 1
        if self._depth == 1:
            self._committed = False
            self._begin()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._end(commit=self._committed and exc is None, exc=exc)

    def commit(self) -> None:
        new_events: list[events.Event] = []
        for product in self.products.seen:
            self.products.save(product)
            new_events.extend(product.events)
            product.events.clear()
        if new_events:
            assert self.context is not None, "events need a context to be written"
            self.new_deliveries += self.deliveries.add(new_events, self.subscriptions, self.context)
        self._committed = True

    def start_deliveries(self, delivery_ids: list[int]) -> list[PendingDelivery]:
        """Count an attempt for each of these deliveries, committed at once, before any runs."""
        with self:
            started = self.deliveries.start(delivery_ids)
            self.commit()
        return started

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A transaction inside the transaction: an error in it undoes only its own work."""
        seen, delivered = len(self.products.seen), len(self.new_deliveries)
        try:
            with self._savepoint():
                yield
        except BaseException as exc:
            del self.products.seen[seen:]
            del self.new_deliveries[delivered:]
            if is_conflict(exc):  # lost a race inside a shared transaction: worth a rerun
                raise TransactionConflict(str(exc)) from exc
            raise

    @abc.abstractmethod
    def _begin(self) -> None: ...

    @abc.abstractmethod
    def _savepoint(self) -> contextlib.AbstractContextManager[None]: ...

    @abc.abstractmethod
    def _end(self, commit: bool, exc: BaseException | None) -> None:
        """Commit or roll back; may turn a lost race into TransactionConflict."""


# PostgreSQL's serialization_failure and deadlock_detected: the loser may simply run again.
RETRYABLE_SQLSTATES = {"40001", "40P01"}


def is_conflict(exc: BaseException) -> bool:
    if isinstance(exc, (IntegrityError, StaleProduct)):
        return True  # a concurrent writer of the same product or batch got there first
    return isinstance(exc, DatabaseError) and (
        getattr(exc.__cause__, "sqlstate", None) in RETRYABLE_SQLSTATES
    )


class DjangoUnitOfWork(AbstractUnitOfWork):
    def __init__(
        self, subscriptions: Mapping[str, tuple[str, ...]], context: MessageContext | None
    ):
        super().__init__(subscriptions, context)
        self.products = DjangoProductRepository()
        self.deliveries = DjangoDeliveryRepository()

    def start_deliveries(self, delivery_ids: list[int]) -> list[PendingDelivery]:
        # The repository counts the attempts in one statement, which PostgreSQL commits on
        # its own: a transaction around it would only add BEGIN and COMMIT round trips.
        return self.deliveries.start(delivery_ids)

    def _begin(self) -> None:
        self._atomic = transaction.atomic(durable=True)
        self._atomic.__enter__()

    def _savepoint(self) -> contextlib.AbstractContextManager[None]:
        return transaction.atomic()

    def _end(self, commit: bool, exc: BaseException | None) -> None:
        if not commit:
            transaction.set_rollback(True)
            self.new_deliveries.clear()
        try:
            self._atomic.__exit__(
                type(exc) if exc else None, exc, exc.__traceback__ if exc else None
            )
        except DatabaseError as failed:  # the COMMIT itself failed
            self.new_deliveries.clear()
            if not is_conflict(failed):
                raise
            exc = failed
        if exc is not None and is_conflict(exc):
            raise TransactionConflict(str(exc)) from exc
