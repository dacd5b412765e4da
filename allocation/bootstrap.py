"""The composition root: the one module that knows every app and wires the bus.

The routing tables below are the whole event flow on one screen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from allocation import handlers
from allocation.domain import commands, events
from allocation.messagebus import MessageBus, handler_name
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

# The deliveries of one broker message that share a transaction (a savepoint each), group by
# group in this order: the projections first (read-your-writes waits for them), then the quick
# Redis publishes (at-least-once already: a crash before the commit publishes again, with the
# same event id). Every other handler (email, reallocation) runs in a transaction of its own.
TRANSACTION_GROUPS = (
    projections.READ_MODEL_HANDLERS,
    (notify.publish_allocated_event, notify.append_to_event_stream),
)

# The handlers whose effects read-your-writes waits for.
READ_MODEL_HANDLERS = frozenset(handler_name(h) for h in projections.READ_MODEL_HANDLERS)


def with_extra_handlers(routing: dict, extra: dict[str, list[str]]) -> dict:
    """The routing table plus the handlers named (by dotted path) in settings."""
    from django.utils.module_loading import import_string

    routing = {event_type: list(handlers) for event_type, handlers in routing.items()}
    for event_name, paths in extra.items():
        routing[events.EVENT_TYPES[event_name]] += [import_string(path) for path in paths]
    return routing


def bootstrap(
    start_uow: Callable[..., Any] | None = None,
    dispatch: Callable[[list[int]], None] | None = None,
    notifications: Any = None,
    publish: Any = None,
    event_stream: Any = None,
    command_handlers: dict | list | None = None,
    event_handlers: dict | None = None,
    command_retries: int | None = None,
    on_delivered: Callable[[list[Any]], None] | None = None,
) -> MessageBus:
    """Build the bus. With no arguments: Django, Celery, email and Redis from settings.

    Unit tests pass a fake unit of work, fake adapters and (since the read-model projections
    write through the ORM) their own event routing; `dispatch=None` then delivers events
    in-process, right after each commit.
    """
    from django.conf import settings

    if start_uow is None:
        from allocation import wakeups
        from allocation.tasks import dispatch_deliveries
        from allocation.unit_of_work import DjangoUnitOfWork

        start_uow = DjangoUnitOfWork
        dispatch = dispatch or dispatch_deliveries
        if on_delivered is None and (ringer := wakeups.configured()):
            on_delivered = wakeups.ring_read_models(ringer, READ_MODEL_HANDLERS)
    if notifications is None:
        from notifications.adapters import EmailNotifications

        notifications = EmailNotifications(settings.OUT_OF_STOCK_EMAIL_RECIPIENTS)
    if publish is None:
        from notifications.adapters import LogPublisher, RedisPublisher

        publish = RedisPublisher(settings.REDIS_URL) if settings.REDIS_URL else LogPublisher()
    if event_stream is None:
        from notifications.adapters import LogPublisher, RedisEventStream

        event_stream = (
            RedisEventStream(
                settings.REDIS_URL,
                settings.ALLOCATION_EVENT_STREAM,
                settings.ALLOCATION_EVENT_STREAM_MAXLEN,
            )
            if settings.REDIS_URL
            else LogPublisher()
        )
    if event_handlers is None:
        extra = settings.ALLOCATION_EXTRA_EVENT_HANDLERS
        event_handlers = with_extra_handlers(EVENT_HANDLERS, extra)
    return MessageBus(
        start_uow=start_uow,
        command_handlers=COMMAND_HANDLERS if command_handlers is None else command_handlers,
        event_handlers=event_handlers,
        dependencies={
            "notifications": notifications,
            "publish": publish,
            "event_stream": event_stream,
        },
        dispatch=dispatch,
        transaction_groups=TRANSACTION_GROUPS,
        on_delivered=on_delivered,
        command_retries=(
            settings.ALLOCATION_COMMAND_RETRIES if command_retries is None else command_retries
        ),
    )
