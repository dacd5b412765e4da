"""In-memory stand-ins for the unit of work and the outside world: no database, no Redis, no mail.

A `FakeStore` plays the database. A `FakeUnitOfWork` works on its own copy of the store's
tables and swaps them in only on commit, so a unit of work that is left without committing
(or that raises) leaves no trace. Transactions are serialised by one lock, like a row lock
on every product at once. Products are handed out and saved as deep copies, and, like the
Django repository, a product is loaded with only the order lines the command names.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import json
import threading
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from allocation import bootstrap as composition
from allocation.domain import events
from allocation.domain.model import Product
from allocation.messagebus import MessageBus
from allocation.unit_of_work import (
    AbstractUnitOfWork,
    MessageContext,
    NewDelivery,
    PendingDelivery,
)
from readmodels import projections

PENDING, DONE, DEAD = "pending", "done", "dead"


@dataclass(frozen=True)
class LoggedEvent:
    """An event-log row: the event as JSON, with its place in the chain."""

    type: str
    payload: dict[str, Any]
    correlation_id: str
    causation_id: str

    def event(self) -> events.Event:
        return events.event_from_dict(self.type, self.payload)


@dataclass(frozen=True)
class FakeDelivery:
    id: int
    event_id: str
    handler: str
    status: str = PENDING
    attempts: int = 0
    last_error: str | None = None
    taken: bool = False  # leased by a step: not due again until it finishes (or is released)


@dataclass
class FakeStore:
    """The committed state every unit of work starts from."""

    products: dict[str, Product] = field(default_factory=dict)
    events: dict[str, LoggedEvent] = field(default_factory=dict)
    deliveries: dict[int, FakeDelivery] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    lock: threading.RLock = field(default_factory=threading.RLock)

    def logged_events(self) -> list[events.Event]:
        return [row.event() for row in self.events.values()]

    def allocations(self, sku: str) -> dict[str, str]:
        """orderid -> batch reference, as committed."""
        return {o: a.batchref for o, a in self.products[sku].allocations.items()}

    def batch(self, ref: str):
        return next(b for p in self.products.values() for b in p.batches if b.reference == ref)

    def time_passes(self) -> None:
        """Every lease and every backoff runs out: what was taken and not done is due again."""
        with self.lock:
            self.deliveries = {i: replace(d, taken=False) for i, d in self.deliveries.items()}


class FakeProductRepository:
    def __init__(self, products: dict[str, Product]):
        self.products = products  # this transaction's copy of the table
        self.seen: list[Product] = []
        self._loaded: dict[int, set[str]] = {}  # id(product) -> orderids it was loaded with

    def add(self, product: Product) -> None:
        self.seen.append(product)
        self._loaded[id(product)] = set()

    def get(self, sku: str, orderid: str | None = None) -> Product | None:
        stored = self.products.get(sku)
        if stored is None:
            return None
        return self._hand_out(stored, [orderid] if orderid in stored.allocations else [])

    def get_by_batchref(self, ref: str, keep: int = 0) -> Product | None:
        stored = next(
            (p for p in self.products.values() if any(b.reference == ref for b in p.batches)),
            None,
        )
        if stored is None:
            return None
        excess = stored.batch(ref).allocated_quantity - keep
        latest_first = sorted(
            (a for a in stored.allocations.values() if a.batchref == ref),
            key=lambda a: (a.version, a.line.orderid),
            reverse=True,
        )
        orderids = []
        for allocation in latest_first:
            if excess <= 0:
                break
            orderids.append(allocation.line.orderid)
            excess -= allocation.line.qty
        return self._hand_out(stored, orderids)

    def batch_exists(self, ref: str) -> bool:
        return any(b.reference == ref for p in self.products.values() for b in p.batches)

    def save(self, product: Product) -> None:
        stored = self.products.get(product.sku)
        loaded = self._loaded[id(product)]
        untouched = {
            orderid: a
            for orderid, a in (stored.allocations.items() if stored else ())
            if orderid not in loaded
        }
        saved = copy.deepcopy(product)
        saved.events = []
        saved.allocations = untouched | saved.allocations
        self.products[product.sku] = saved
        self._loaded[id(product)] = set(product.allocations)

    def _hand_out(self, stored: Product, orderids: list[str]) -> Product:
        product = copy.deepcopy(stored)
        product.allocations = {o: product.allocations[o] for o in orderids}
        self.seen.append(product)
        self._loaded[id(product)] = set(orderids)
        return product


class FakeDeliveryRepository:
    def __init__(
        self,
        logged: dict[str, LoggedEvent],
        deliveries: dict[int, FakeDelivery],
        ids: Iterator[int],
    ):
        self.logged = logged
        self.deliveries = deliveries
        self.ids = ids

    def add(
        self,
        new_events: list[events.Event],
        subscriptions: Mapping[str, tuple[str, ...]],
        context: MessageContext,
    ) -> list[NewDelivery]:
        added = []
        for event in new_events:
            event_id = str(uuid.uuid4())
            type_name = type(event).__name__
            # Through JSON, as the outbox stores it: an event that is not JSON-able fails here.
            payload = json.loads(json.dumps(event.to_dict()))
            self.logged[event_id] = LoggedEvent(
                type_name, payload, context.correlation_id, context.causation_id
            )
            for handler in subscriptions.get(type_name, ()):
                delivery = FakeDelivery(next(self.ids), event_id, handler)
                self.deliveries[delivery.id] = delivery
                added.append(NewDelivery(delivery.id, handler))
        return added

    def take_due(self, limit: int, also=()) -> list[PendingDelivery]:
        """Due: pending and not taken by another step (a failure with backoff is due at once:
        the fakes keep no clock)."""
        due = [d for d in self.deliveries.values() if d.status == PENDING and not d.taken]
        named = [self.deliveries[i] for i in also if i in self.deliveries]
        chosen = {d.id: d for d in [*due[:limit], *named] if d.status == PENDING}
        taken = []
        for delivery_id in sorted(chosen):
            delivery = self.deliveries[delivery_id]
            self.deliveries[delivery_id] = replace(
                delivery, attempts=delivery.attempts + 1, taken=True
            )
            logged = self.logged[delivery.event_id]
            taken.append(
                PendingDelivery(
                    id=delivery_id,
                    handler=delivery.handler,
                    event=logged.event(),
                    event_id=delivery.event_id,
                    correlation_id=logged.correlation_id,
                )
            )
        return taken

    def lock(self, deliveries: list[PendingDelivery]) -> list[PendingDelivery]:
        return [d for d in deliveries if self.deliveries[d.id].status == PENDING]

    def mark_done(self, delivery_ids: list[int]) -> None:
        for delivery_id in delivery_ids:
            delivery = self.deliveries[delivery_id]
            self.deliveries[delivery_id] = replace(delivery, status=DONE)

    def record_failure(self, delivery_id: int, error: BaseException, final: bool = False) -> None:
        delivery = self.deliveries[delivery_id]
        status = DEAD if final else delivery.status
        # Still taken: not due again until its backoff is over (`release`).
        self.deliveries[delivery_id] = replace(delivery, last_error=repr(error), status=status)


class FakeUnitOfWork(AbstractUnitOfWork):
    def __init__(
        self,
        store: FakeStore,
        subscriptions: Mapping[str, tuple[str, ...]],
        context: MessageContext | None,
        after_commit=None,
    ):
        super().__init__(subscriptions, context, after_commit)
        self.store = store

    def _begin(self) -> None:
        self.store.lock.acquire()
        self.products = FakeProductRepository(dict(self.store.products))
        self.deliveries = FakeDeliveryRepository(
            dict(self.store.events), dict(self.store.deliveries), self.store.ids
        )

    @contextlib.contextmanager
    def _savepoint(self) -> Iterator[None]:
        tables = (self.products.products, self.deliveries.logged, self.deliveries.deliveries)
        saved = [dict(table) for table in tables]
        try:
            yield
        except BaseException:
            for table, copy_ in zip(tables, saved, strict=True):
                table.clear()
                table.update(copy_)
            raise

    def _end(self, commit: bool, exc: BaseException | None) -> None:
        try:
            if commit:
                self.store.products = self.products.products
                self.store.events = self.deliveries.logged
                self.store.deliveries = self.deliveries.deliveries
            else:
                self.new_deliveries.clear()
        finally:
            self.store.lock.release()
        if commit and self.new_deliveries and self.after_commit is not None:
            self.after_commit(list(self.new_deliveries))


class FakeNotifications:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.dedup_keys: list[str | None] = []

    def send(
        self, subject: str, body: str, dedup_key: str | None = None, kind: str = "email"
    ) -> None:
        self.sent.append((subject, body))
        self.dedup_keys.append(dedup_key)


class FakePublisher:
    """Records pub/sub messages and stream entries."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.streamed: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, channel: str, message: dict[str, Any]) -> None:
        self.published.append((channel, message))

    def append(self, event_id: str, type_name: str, payload: dict[str, Any]) -> None:
        self.streamed.append((event_id, type_name, payload))

    pipelined = staticmethod(contextlib.nullcontext)


# The production routing without the read-model projections: those write read tables through
# the ORM and are tested in tests/integration.
UNIT_EVENT_HANDLERS = {
    event_type: [h for h in handlers if h not in projections.READ_MODEL_HANDLERS]
    for event_type, handlers in composition.EVENT_HANDLERS.items()
}


def bootstrap_test_runner(
    **overrides: Any,
) -> tuple[composition.Wiring, FakeStore, FakeNotifications, FakePublisher]:
    """The bus and the delivery runner on fakes. Unless `wake=` says otherwise, a worker
    step runs in-process right after each commit."""
    store = FakeStore()
    notifications = FakeNotifications()
    publisher = FakePublisher()
    options: dict[str, Any] = {
        "event_handlers": UNIT_EVENT_HANDLERS,
        "command_retries": 2,
        **overrides,
    }
    wiring = composition.bootstrap(
        start_uow=functools.partial(FakeUnitOfWork, store),
        notifications=notifications,
        publish=publisher,
        event_stream=publisher,
        **options,
    )
    return wiring, store, notifications, publisher


def bootstrap_test_bus(
    **overrides: Any,
) -> tuple[MessageBus, FakeStore, FakeNotifications, FakePublisher]:
    """`bootstrap_test_runner`, for tests that need only the command bus."""
    wiring, store, notifications, publisher = bootstrap_test_runner(**overrides)
    return wiring.bus, store, notifications, publisher
