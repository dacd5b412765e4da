"""The event log: each event, its cause, its chain and its deliveries."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.db.models import Q
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from allocation import models
from allocation.admin.common import (
    ReadOnlyAdmin,
    ReadOnlyInline,
    SkuColumn,
    arrival,
    change_url,
    changelist_url,
    exact_filter,
)
from allocation.admin.deliveries import error_line, handler_short_name, next_attempt, status_badge
from allocation.domain.events import EVENT_TYPES

EVENT_SUMMARIES = {
    "BatchCreated": "New batch {ref}: {qty} units, {arrival}",
    "BatchQuantityChanged": "Batch {ref} now holds {qty} units",
    "Allocated": "Order {orderid}: {qty} allocated to batch {batchref}",
    "Deallocated": "Order {orderid}: {qty} taken off batch {batchref}, to be reallocated",
    "AllocationCancelled": "Order {orderid}: {qty} cancelled on batch {batchref}",
    "OutOfStock": "No batch could take an order line",
}


def describe(event_type: str, payload: Any) -> str:
    template = EVENT_SUMMARIES.get(event_type)
    if template and isinstance(payload, dict):
        try:
            return template.format_map({**payload, "arrival": arrival(payload.get("eta"))})
        except (KeyError, ValueError):
            pass
    return json.dumps(payload, sort_keys=True)


def event_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except (TypeError, ValueError):
        return None


def short_id(value: Any) -> str:
    value = str(value)
    return value if len(value) <= 13 else f"{value[:8]}…"


class EventTypeFilter(admin.SimpleListFilter):
    """The event types the domain defines (no DISTINCT over the whole log)."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(EVENT_TYPES)]

    def queryset(self, request, queryset):
        return queryset.filter(type=self.value()) if self.value() else queryset


class EventChangeList(ChangeList):
    def get_results(self, request):
        super().get_results(request)
        # One query for the causes of the whole page, not one per row.
        ids = {event_id(e.causation_id) for e in self.result_list} - {None}
        causes = dict(models.StoredEvent.objects.filter(pk__in=ids).values_list("pk", "type"))
        for event in self.result_list:
            cause = event_id(event.causation_id)
            event.cause = (cause, causes[cause]) if cause in causes else None


class DeliveryInline(ReadOnlyInline):
    model = models.Delivery
    fields = ("delivery", "handler_name", "state", "attempts", "next_attempt", "error")
    readonly_fields = fields
    ordering = ("handler",)
    verbose_name_plural = "deliveries (one per handler)"

    @admin.display(description="delivery")
    def delivery(self, obj):
        return format_html('<a href="{}">#{}</a>', change_url(obj), obj.pk)

    @admin.display(description="handler")
    def handler_name(self, obj):
        return handler_short_name(obj.handler)

    @admin.display(description="status")
    def state(self, obj):
        return status_badge(obj.status)

    @admin.display(description="next attempt")
    def next_attempt(self, obj):
        return next_attempt(obj)

    @admin.display(description="last error")
    def error(self, obj):
        return error_line(obj.last_error)


@admin.register(models.StoredEvent)
class StoredEventAdmin(SkuColumn, ReadOnlyAdmin):
    list_display = ("occurred", "event", "summary", "caused_by", "chain")
    list_filter = (
        EventTypeFilter,
        exact_filter("sku", "SKU"),
        exact_filter("correlation_id", "chain (correlation id)"),
        exact_filter("causation_id", "caused by (event id)"),
    )
    search_fields = ("sku", "type", "=correlation_id", "=id")
    search_help_text = "Search by SKU, event type, a whole event id or a whole correlation id."
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # counts per filter value cost a scan of the log
    ordering = ("-occurred_at", "-version")  # newest first; a chain reads oldest first
    fieldsets = [
        (None, {"fields": ("id", "type", "sku_code", "version", "occurred", "summary")}),
        ("Payload", {"fields": ("payload_json",)}),
        (
            "Chain",
            {
                "fields": ("correlation", "cause", "effects"),
                "description": "A command and every event that follows from it share a "
                "correlation id. An event's causation id is the id of the event whose "
                "handler issued the command that recorded it; for the first events of a "
                "chain it is the command's own id.",
            },
        ),
    ]
    readonly_fields = (
        "id",
        "type",
        "sku_code",
        "version",
        "occurred",
        "summary",
        "payload_json",
        "correlation",
        "cause",
        "effects",
    )
    inlines = [DeliveryInline]
    change_form_template = "admin/allocation/storedevent/change_form.html"

    def get_changelist(self, request, **kwargs):
        return EventChangeList

    def get_ordering(self, request):
        if "correlation_id" in request.GET:  # a chain reads best in the order it happened
            return ("occurred_at", "position")
        return ("-occurred_at", "-position")

    def get_search_results(self, request, queryset, search_term):
        # An event type matches whatever its case; an id matches whole (and uses the index).
        types = {name.lower(): name for name in EVENT_TYPES}
        words = search_term.split()
        if words and all(w.lower() in types for w in words):
            return queryset.filter(type__in=[types[w.lower()] for w in words]), False
        term = search_term.strip()
        if event_id(term):
            return queryset.filter(Q(pk=event_id(term)) | Q(correlation_id=term)), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="when (UTC)", ordering="occurred_at")
    def occurred(self, obj):
        # To the millisecond: the events of one chain are apart by less than a minute.
        return f"{obj.occurred_at:%Y-%m-%d %H:%M:%S}.{obj.occurred_at.microsecond // 1000:03d}"

    @admin.display(description="event", ordering="type")
    def event(self, obj):
        return format_html(
            '<strong>{}</strong><br><span class="quiet">{} v{}</span>',
            obj.type,
            obj.sku,
            obj.version,
        )

    @admin.display(description="what happened")
    def summary(self, obj):
        return describe(obj.type, obj.payload)

    @admin.display(description="payload")
    def payload_json(self, obj):
        return format_html(
            '<pre class="payload">{}</pre>', json.dumps(obj.payload, indent=2, sort_keys=True)
        )

    @admin.display(description="caused by")
    def caused_by(self, obj):
        cause = getattr(obj, "cause", None)
        if cause is None:
            return format_html('<span class="quiet" title="{}">command</span>', obj.causation_id)
        pk, cause_type = cause
        return format_html(
            '<a href="{}" title="event {}">← {}</a>',
            reverse("admin:allocation_storedevent_change", args=[pk]),
            pk,
            cause_type,
        )

    @admin.display(description="chain")
    def chain(self, obj):
        return format_html(
            '<a href="{}" title="All events of correlation id {}">{}</a>',
            changelist_url(models.StoredEvent, correlation_id=obj.correlation_id),
            obj.correlation_id,
            short_id(obj.correlation_id),
        )

    @admin.display(description="correlation id")
    def correlation(self, obj):
        count = models.StoredEvent.objects.filter(correlation_id=obj.correlation_id).count()
        return format_html(
            '<code>{}</code> · <a href="{}">all {} event{} of this chain</a>',
            obj.correlation_id,
            changelist_url(models.StoredEvent, correlation_id=obj.correlation_id),
            count,
            "" if count == 1 else "s",
        )

    @admin.display(description="caused by")
    def cause(self, obj):
        pk = event_id(obj.causation_id)
        found = models.StoredEvent.objects.filter(pk=pk).first() if pk else None
        if found is None:
            return format_html(
                "<code>{}</code> · the command that started the chain (not an event)",
                obj.causation_id,
            )
        return format_html(
            '<code>{}</code> · <a href="{}">{}</a>',
            obj.causation_id,
            change_url(found),
            f"{found.type}: {describe(found.type, found.payload)}",
        )

    @admin.display(description="led to")
    def effects(self, obj):
        followers = models.StoredEvent.objects.filter(
            correlation_id=obj.correlation_id, causation_id=str(obj.pk)
        ).order_by("occurred_at", "version")
        if not followers:
            return "No events (yet)"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                '<li><a href="{}">{}</a>: {}</li>',
                ((change_url(e), e.type, describe(e.type, e.payload)) for e in followers),
            ),
        )


# --- deliveries --------------------------------------------------------------------------------
