"""The composition root: the one module that knows every app and wires the bus and the runner.

The routing tables below are the whole event flow on one screen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from allocation import handlers
from allocation.delivery import DeliveryRunner, Group
from allocation.domain import commands, events
from allocation.messagebus import MessageBus, inject
from notifications import handlers as notify
from readmodels import projections

COMMAND_HANDLERS = {
    commands.CreateBatch: handlers.add_batch,
    commands.Allocate: handlers.allocate,
    commands.ChangeBatchQuantity: handlers.change_batch_quantity,
    commands.CancelAllocation: handlers.cancel_allocation,
}

EVENT_HANDLERS = {
    events.BatchCreated: [
        projections.add_batch_to_read_model,
        notify.append_to_event_stream,
    ],
    events.BatchQuantityChanged: [
        projections.change_batch_quantity_in_read_model,
        notify.append_to_event_stream,
    ],
    events.Allocated: [
        projections.add_allocation_to_read_model,
        notify.publish_allocated_event,
        notify.append_to_event_stream,
    ],
    events.Deallocated: [
        projections.remove_allocation_from_read_model,
        handlers.reallocate,
        notify.append_to_event_stream,
    ],
    events.AllocationCancelled: [
        projections.remove_allocation_from_read_model,
        notify.append_to_event_stream,
    ],
    events.OutOfStock: [
        notify.send_out_of_stock_notification,
        notify.append_to_event_stream,
    ],
}

# The name a delivery row stores for its handler. Stable: a handler may move or be renamed in
# the code, and the deliveries already written still reach it. Never reuse a name for a
# handler that does something else.
HANDLER_NAMES = {
    projections.add_batch_to_read_model: "read_model.add_batch",
    projections.change_batch_quantity_in_read_model: "read_model.change_batch_quantity",
    projections.add_allocation_to_read_model: "read_model.add_allocation",
    projections.remove_allocation_from_read_model: "read_model.remove_allocation",
    notify.publish_allocated_event: "redis.publish_line_allocated",
    notify.append_to_event_stream: "redis.append_to_event_stream",
    notify.send_out_of_stock_notification: "email.out_of_stock",
    handlers.reallocate: "allocation.reallocate",
}


def handler_name(handler: Callable[..., Any]) -> str:
    """A handler's stable name; one that has none (a plugin from settings) goes by its path."""
    return HANDLER_NAMES.get(handler) or f"{handler.__module__}.{handler.__qualname__}"


@dataclass(frozen=True)
class GroupSpec:
    """A transaction group of bootstrap: its handlers, and how they apply as sets."""

    handlers: tuple[Callable[..., Any], ...]
    together: Callable[[dict[str, Any]], Any] | None = None  # dependencies -> context factory


# The deliveries of one worker step that share a transaction, group by group in this order;
# every other handler (email, reallocation) runs in a transaction of its own. The projections
# and the quick Redis publishes share one: the projections are applied as sets, then the
# publishes go out in one pipeline, then one done-mark for them all commits. A crash before
# that commit publishes again, with the same event id (the publishes are at-least-once).
TRANSACTION_GROUPS = (
    GroupSpec(
        (
            *projections.READ_MODEL_HANDLERS,
            notify.publish_allocated_event,
            notify.append_to_event_stream,
        ),
        lambda deps: together(deps["publish"].pipelined, projections.applied_together),
    ),
)


def together(*contexts: Callable[[], Any]) -> Callable[[], Any]:
    """One context made of several, entered in order and left in reverse: here the
    projections' SQL runs before the Redis pipeline is sent."""

    @contextlib.contextmanager
    def entered():
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context())
            yield

    return entered


# The handlers whose effects read-your-writes waits for.
READ_MODEL_HANDLERS = frozenset(handler_name(h) for h in projections.READ_MODEL_HANDLERS)


def with_extra_handlers(routing: dict, extra: dict[str, list[str]]) -> dict:
    """The routing table plus the handlers named (by dotted path) in settings."""
    from django.utils.module_loading import import_string

    routing = {event_type: list(handlers) for event_type, handlers in routing.items()}
    for event_name, paths in extra.items():
        routing[events.EVENT_TYPES[event_name]] += [import_string(path) for path in paths]
    return routing


@dataclass(frozen=True)
class Wiring:
    bus: MessageBus
    runner: DeliveryRunner
    read_models: frozenset[str] = READ_MODEL_HANDLERS


def bootstrap(
    start_uow: Callable[..., Any] | None = None,
    wake: Callable[[list[Any]], None] | None = None,
    notifications: Any = None,
    publish: Any = None,
    event_stream: Any = None,
    command_handlers: dict | list | None = None,
    event_handlers: Mapping[type[events.Event], Iterable[Callable[..., Any]]] | None = None,
    command_retries: int | None = None,
    on_delivered: Callable[[list[Any]], None] | None = None,
    groups: Iterable[GroupSpec] = TRANSACTION_GROUPS,
) -> Wiring:
    """Build the bus and the delivery runner. With no arguments: Django, Celery, email and
    Redis from settings.

    Unit tests pass a fake unit of work, fake adapters and (since the read-model projections
    write through the ORM) their own event routing; `wake=None` then runs a worker step
    in-process, right after each commit.
    """
    from django.conf import settings

    ask_for_help = None
    if start_uow is None:
        from allocation import wakeups
        from allocation.django_unit_of_work import DjangoUnitOfWork
        from allocation.tasks import send_step

        start_uow = DjangoUnitOfWork
        redis_wakeups = wakeups.configured()
        if wake is None:
            wake = wakeups.doorbell(redis_wakeups, send_step)
            ask_for_help = send_step  # past the doorbell: the worker that holds it is busy
        if on_delivered is None and redis_wakeups is not None:
            on_delivered = wakeups.ring_read_models(redis_wakeups, READ_MODEL_HANDLERS)
    if notifications is None:
        from notifications.adapters import EmailNotifications

        notifications = EmailNotifications(settings.OUT_OF_STOCK_EMAIL_RECIPIENTS)
    if publish is None or event_stream is None:
        from notifications.adapters import LogPublisher, RedisChannels

        channels = (
            RedisChannels(
                settings.REDIS_URL,
                settings.ALLOCATION_EVENT_STREAM,
                settings.ALLOCATION_EVENT_STREAM_MAXLEN,
            )
            if settings.REDIS_URL
            else LogPublisher()
        )
        publish = publish or channels
        event_stream = event_stream or channels
    if event_handlers is None:
        extra = settings.ALLOCATION_EXTRA_EVENT_HANDLERS
        event_handlers = with_extra_handlers(EVENT_HANDLERS, extra)
    dependencies = {
        "notifications": notifications,
        "publish": publish,
        "event_stream": event_stream,
    }
    subscriptions = {
        event_type.__name__: tuple(handler_name(h) for h in handlers)
        for event_type, handlers in event_handlers.items()
    }
    injected = {
        handler_name(h): inject(h, dependencies, handler_name(h))
        for handlers in event_handlers.values()
        for h in handlers
    }
    bus = MessageBus(
        start_uow=start_uow,
        command_handlers=COMMAND_HANDLERS if command_handlers is None else command_handlers,
        subscriptions=subscriptions,
        dependencies=dependencies,
        wake=None,  # set below: the runner's step, when no transport was given
        command_retries=(
            settings.ALLOCATION_COMMAND_RETRIES if command_retries is None else command_retries
        ),
    )
    runner = DeliveryRunner(
        bus,
        injected,
        groups=[
            Group(
                frozenset(handler_name(h) for h in spec.handlers),
                spec.together(dependencies) if spec.together else None,
            )
            for spec in groups
        ],
        on_delivered=on_delivered,
        batch_size=settings.ALLOCATION_DELIVERY_BATCH,
        ask_for_help=ask_for_help,
    )
    bus.wake = wake or (lambda deliveries: runner.run_due())
    return Wiring(bus, runner)
