"""The unit of work: one transaction per command or delivery, and the outbox written inside it.

Plain Python, so that handlers import no framework; `allocation/django_unit_of_work.py` is the
implementation on Django's ORM and PostgreSQL, `tests/unit/fakes.py` the one in memory.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from allocation.domain import events
from allocation.domain.model import Product


class TransactionConflict(Exception):
    """The transaction lost a race with another writer; running the command again is safe."""


class NestedTransaction(RuntimeError):
    """A unit of work was opened inside a transaction that someone else will commit."""


@dataclass(frozen=True)
class MessageContext:
    """Ties the events of a command to the chain that caused it (for logs and the event log)."""

    correlation_id: str
    causation_id: str


@dataclass(frozen=True)
class NewDelivery:
    """A delivery a commit wrote: its id and its handler's name."""

    id: int
    handler: str


@dataclass(frozen=True)
class PendingDelivery:
    """A delivery taken by a worker step: its handler and its event, with the event's ids."""

    id: int
    handler: str
    event: events.Event
    event_id: str
    correlation_id: str


@dataclass
class Receipt:
    """What a caller of `bus.handle()` may ask to be told about the commit: the deliveries it
    wrote (read-your-writes waits for some of them)."""

    correlation_id: str
    deliveries: list[NewDelivery] = field(default_factory=list)


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
    ) -> list[NewDelivery]:
        """Write the events to the event log, with one delivery per subscribed handler, due at
        once."""

    def take_due(self, limit: int, also: list[int] = ()) -> list[PendingDelivery]:
        """Take up to `limit` due deliveries (and those of `also` still pending, due or not)
        that no other worker is taking: count an attempt for each, lease them, and park those
        already out of attempts as dead. Returns the ones to run, with their events. Atomic on
        its own: called outside a unit of work's transaction."""

    def lock(self, deliveries: list[PendingDelivery]) -> list[PendingDelivery]:
        """Lock those still pending for this transaction, skipping any another worker holds."""

    def mark_done(self, delivery_ids: list[int]) -> None: ...

    def record_failure(self, delivery_id: int, error: BaseException, final: bool = False) -> None:
        """Keep the error; retry later with backoff, or park as dead when out of attempts or
        when the failure is `final` (a retry cannot help)."""


class AbstractUnitOfWork(abc.ABC):
    """`with uow:` opens the transaction; `uow.commit()` saves the products and their events.

    Leaving the block without `commit()` rolls back. A handler that runs inside another
    handler's unit of work (a follow-up command of a delivery) joins its transaction. Once
    the transaction has committed, `after_commit` is told the deliveries it wrote.
    """

    products: ProductRepository
    deliveries: DeliveryRepository

    def __init__(
        self,
        subscriptions: Mapping[str, tuple[str, ...]],
        context: MessageContext | None,
        after_commit: Callable[[list[NewDelivery]], None] | None = None,
    ):
        self.subscriptions = subscriptions
        self.context = context
        self.after_commit = after_commit
        self.new_deliveries: list[NewDelivery] = []
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

    def take_due(self, limit: int, also: list[int] = ()) -> list[PendingDelivery]:
        """Take due deliveries for a worker step, committed at once, before any of them runs."""
        with self:
            taken = self.deliveries.take_due(limit, also)
            self.commit()
        return taken

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
            if self.is_conflict(exc):  # lost a race inside a shared transaction: worth a rerun
                raise TransactionConflict(str(exc)) from exc
            raise

    def is_conflict(self, exc: BaseException) -> bool:
        """Whether `exc` means another writer got there first (running again may succeed)."""
        return isinstance(exc, TransactionConflict)

    @abc.abstractmethod
    def _begin(self) -> None: ...

    @abc.abstractmethod
    def _savepoint(self) -> contextlib.AbstractContextManager[None]: ...

    @abc.abstractmethod
    def _end(self, commit: bool, exc: BaseException | None) -> None:
        """Commit or roll back, and tell `after_commit`; may turn a lost race into
        TransactionConflict."""
