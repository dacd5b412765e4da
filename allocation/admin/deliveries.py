"""Deliveries: the state of each (event, handler) pair, with retry and discard."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timeuntil

from allocation import models, sweeper
from allocation.admin.common import NOTHING, ReadOnlyAdmin, change_url
from allocation.apps import get_bus

STATUS_COLOURS = {
    models.Delivery.Status.PENDING: "#b88a00",
    models.Delivery.Status.DONE: "#3c7d22",
    models.Delivery.Status.DEAD: "#ba2121",
    models.Delivery.Status.DISCARDED: "#777",
}


def handler_short_name(handler: str) -> str:
    """A handler's name as staff read it: "read_model.add_allocation" -> "read model: add
    allocation"; a plugin's dotted path keeps its last part."""
    where, _, what = handler.rpartition(".")
    if "." in where:
        return what
    return f"{where.replace('_', ' ')}: {what.replace('_', ' ')}" if where else what


def status_badge(status: str) -> str:
    return format_html(
        '<span style="background:{};color:#fff;padding:1px 7px;border-radius:9px;'
        'font-size:0.75rem;white-space:nowrap">{}</span>',
        STATUS_COLOURS.get(status, "#777"),
        status,
    )


def next_attempt(delivery: models.Delivery) -> str:
    if delivery.status != models.Delivery.Status.PENDING:
        return NOTHING
    if delivery.next_attempt_at <= timezone.now():
        return "due now"
    return f"in {timeuntil(delivery.next_attempt_at)}"


def error_line(error: str, width: int = 80) -> str:
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    if not lines:
        return NOTHING
    last = lines[-1]
    shown = last if len(last) <= width else f"{last[: width - 1]}…"
    return format_html('<span title="{}">{}</span>', last, shown)


class HandlerFilter(admin.SimpleListFilter):
    """The handlers subscribed in this deployment, by short name (no scan of the table)."""

    title = "handler"
    parameter_name = "handler"

    def lookups(self, request, model_admin):
        names = {name for names in get_bus().subscriptions.values() for name in names}
        return sorted(((name, handler_short_name(name)) for name in names), key=lambda c: c[1])

    def queryset(self, request, queryset):
        return queryset.filter(handler=self.value()) if self.value() else queryset


@admin.register(models.Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = (
        "event_link",
        "handler_name",
        "state",
        "attempts",
        "next_attempt_in",
        "error",
    )
    list_filter = ("status", HandlerFilter)
    list_select_related = ("event",)
    search_fields = ("=event__id", "event__sku", "=event__correlation_id")
    search_help_text = "Search by SKU, a whole event id or a whole correlation id."
    ordering = ("-pk",)
    fields = (
        "event_link",
        "handler",
        "state",
        "attempts",
        "next_attempt_at",
        "done_at",
        "error_text",
    )
    readonly_fields = fields
    actions = ["retry_dead", "discard_dead"]

    def has_operate_permission(self, request):
        return request.user.has_perm("allocation.change_delivery")

    @admin.display(description="event", ordering="event__occurred_at")
    def event_link(self, obj):
        event = obj.event
        return format_html(
            '<a href="{}">{}</a><br><span class="quiet">{} v{}</span>',
            change_url(event),
            event.type,
            event.sku,
            event.version,
        )

    @admin.display(description="handler", ordering="handler")
    def handler_name(self, obj):
        return format_html(
            '<span title="{}">{}</span>', obj.handler, handler_short_name(obj.handler)
        )

    @admin.display(description="status", ordering="status")
    def state(self, obj):
        return status_badge(obj.status)

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt_in(self, obj):
        return next_attempt(obj)

    @admin.display(description="last error")
    def error(self, obj):
        return error_line(obj.last_error)

    @admin.display(description="last error")
    def error_text(self, obj):
        return (
            format_html('<pre class="error">{}</pre>', obj.last_error)
            if obj.last_error
            else NOTHING
        )

    @admin.action(description="Retry the selected dead deliveries", permissions=["operate"])
    def retry_dead(self, request, queryset):
        selected = list(queryset.values_list("pk", flat=True))
        ids = sweeper.retry(selected)
        get_bus().wake_workers(ids)
        self.message_user(request, f"Retrying {len(ids)} dead deliveries.", messages.SUCCESS)
        self.report_not_dead(request, len(selected) - len(ids))

    @admin.action(description="Discard the selected dead deliveries", permissions=["operate"])
    def discard_dead(self, request, queryset):
        selected = list(queryset.values_list("pk", flat=True))
        count = sweeper.discard(selected)
        self.message_user(request, f"Discarded {count} dead deliveries.", messages.SUCCESS)
        self.report_not_dead(request, len(selected) - count)

    def report_not_dead(self, request, count: int) -> None:
        if count:
            verb = "was" if count == 1 else "were"
            self.message_user(
                request,
                f"{count} of the selected deliveries {verb} not dead and {verb} left alone.",
                messages.WARNING,
            )
