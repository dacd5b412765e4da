"""The unit of work on Django's ORM: `transaction.atomic(durable=True)`, the product
repository, and the outbox's delivery repository."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

from django.db import DatabaseError, IntegrityError, connection, transaction

from allocation import commit_sql, database
from allocation.outbox import DjangoDeliveryRepository
from allocation.repository import DjangoProductRepository, StaleProduct
from allocation.unit_of_work import (
    AbstractUnitOfWork,
    MessageContext,
    NestedTransaction,
    NewDelivery,
    PendingDelivery,
    TransactionConflict,
)

# PostgreSQL's serialization_failure and deadlock_detected: the loser may simply run again.
RETRYABLE_SQLSTATES = {"40001", "40P01"}


def is_conflict(exc: BaseException) -> bool:
    if isinstance(exc, (TransactionConflict, IntegrityError, StaleProduct)):
        return True  # a concurrent writer of the same product or batch got there first
    return isinstance(exc, DatabaseError) and (
        getattr(exc.__cause__, "sqlstate", None) in RETRYABLE_SQLSTATES
    )


class DjangoUnitOfWork(AbstractUnitOfWork):
    def __init__(
        self,
        subscriptions: Mapping[str, tuple[str, ...]],
        context: MessageContext | None,
        after_commit: Callable[[list[NewDelivery]], None] | None = None,
    ):
        super().__init__(subscriptions, context, after_commit)
        self.products = DjangoProductRepository()
        self.deliveries = DjangoDeliveryRepository()

    # Each of these is one statement, which PostgreSQL commits on its own: a transaction
    # around it would only add BEGIN and COMMIT round trips.

    def take_due(self, limit: int, also: list[int] = ()) -> list[PendingDelivery]:
        return self.deliveries.take_due(limit, also)

    def is_conflict(self, exc: BaseException) -> bool:
        return is_conflict(exc)

    def commit(self) -> None:
        """On PostgreSQL, the product's changes, its events and their deliveries in one
        statement (allocation/commit_sql.py) when that can be done; otherwise row by row."""
        changed = [(p, c) for p in self.products.seen if (c := self.products.changes(p))]
        # A command's writes are the source of truth: they wait for the disk even in a process
        # that commits its derived writes asynchronously.
        durable = bool(changed) and database.derived_writes_only
        if connection.vendor != "postgresql" or not commit_sql.can_write([c for _, c in changed]):
            if durable:
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit TO on")
            super().commit()
            return
        new_events = [e for product in self.products.seen for e in product.events]
        written = commit_sql.write(
            changed[0][1] if changed else None,
            new_events,
            self.subscriptions,
            self.context,
            durable=durable,
        )
        for product, _ in changed:
            self.products.saved(product)
        for product in self.products.seen:
            product.events.clear()
        self.new_deliveries += written
        self._committed = True

    def _begin(self) -> None:
        self._atomic = transaction.atomic(durable=True)
        try:
            self._atomic.__enter__()
        except RuntimeError as exc:  # Django: "A durable atomic block cannot be nested ..."
            raise NestedTransaction(
                "The message bus opens its own transaction and commits it before any event "
                "leaves; call bus.handle() outside transaction.atomic() (and with "
                "ATOMIC_REQUESTS off)."
            ) from exc

    def _savepoint(self) -> contextlib.AbstractContextManager[None]:
        return transaction.atomic()

    def _end(self, commit: bool, exc: BaseException | None) -> None:
        if commit and self.new_deliveries and self.after_commit is not None:
            # Inside the durable block, so Django runs it once the block has committed (and
            # never if it rolls back); robust: a broker that is down is logged, not raised.
            written, tell = list(self.new_deliveries), self.after_commit
            transaction.on_commit(lambda: tell(written), robust=True)
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
