"""Admin for warehouse and ops staff: the write side is read-only here.

Nothing in this module saves a write-side row. Adding a batch, changing its quantity and
cancelling allocations dispatch commands through the bus, like every other client, so the
domain's rules, the event log and the read models see admin changes exactly as API changes.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import DELETION, LogEntry
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, Q, Sum
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.timesince import timeuntil

from allocation import models, sweeper
from allocation.apps import get_bus
from allocation.domain import commands
from allocation.domain.events import EVENT_TYPES
from allocation.domain.model import DomainError
from allocation.forms import AddBatchForm, ChangeQuantityForm, CommandForm

admin.site.site_header = "Allocation service"
admin.site.site_title = "Allocation admin"
admin.site.index_title = "Stock, allocations and events"
# The index adds a link to the stock overview (readmodels.admin) above the apps.
admin.site.index_template = "allocation/admin/index.html"

# The commands' permissions (declared on the models' Meta, held by the "allocators" group).
CREATE_BATCH = "allocation.create_batch"
CHANGE_BATCH_QUANTITY = "allocation.change_batch_quantity"
CANCEL_ALLOCATION = "allocation.cancel_allocation"
NO_RAW_WRITES = "Write-side rows change only through commands (the forms and actions here)."
NOTHING = format_html('<span class="quiet">{}</span>', "—")


def changelist_url(model: type, **filters: Any) -> str:
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return f"{url}?{urlencode(filters)}" if filters else url


def change_url(obj: Any) -> str:
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


def arrival(eta: Any) -> str:
    """A batch's eta (a date, or an ISO string in an event) in words."""
    if not eta:
        return "in the warehouse"
    return f"arriving {eta if isinstance(eta, str) else eta.isoformat()}"


def posted(request: HttpRequest) -> Any:
    """The submitted data, for binding a form (an empty POST is still a submission)."""
    return request.POST if request.method == "POST" else None


def nowrap(text: Any) -> str:
    return format_html('<span style="white-space:nowrap">{}</span>', text)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shows rows and never writes them, whatever the user's permissions say."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    # The permissions above hide every way to write; these refuse it should one be reached.
    def save_model(self, request, obj, form, change):
        raise PermissionDenied(NO_RAW_WRITES)

    def save_related(self, request, form, formsets, change):
        raise PermissionDenied(NO_RAW_WRITES)

    def delete_model(self, request, obj):
        raise PermissionDenied(NO_RAW_WRITES)

    def delete_queryset(self, request, queryset):
        raise PermissionDenied(NO_RAW_WRITES)


class SkuColumn:
    @admin.display(description="SKU", ordering="sku")
    def sku_code(self, obj):
        return obj.sku


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def exact_filter(parameter: str, title: str) -> type[admin.SimpleListFilter]:
    """A sidebar filter that shows, and lets you clear, a filter set by a link (`?sku=...`)."""

    class ExactFilter(admin.SimpleListFilter):
        def lookups(self, request, model_admin):
            value = request.GET.get(parameter)
            return (
                [(value, value if len(value) <= 24 else f"{value[:8]}…{value[-8:]}")]
                if value
                else []
            )

        def queryset(self, request, queryset):
            value = self.value()
            return queryset.filter(**{parameter: value}) if value else queryset

    ExactFilter.title = title
    ExactFilter.parameter_name = parameter
    return ExactFilter


# --- products and batches --------------------------------------------------------------------


class BatchInline(ReadOnlyInline):
    model = models.Batch
    fields = ("batch", "when", "purchased_quantity", "allocated_quantity", "available")
    readonly_fields = fields
    ordering = (F("eta").asc(nulls_first=True), "reference")
    verbose_name_plural = "batches, in the order allocation prefers them"

    @admin.display(description="batch")
    def batch(self, obj):
        return format_html('<a href="{}">{}</a>', change_url(obj), obj.reference)

    @admin.display(description="arrival")
    def when(self, obj):
        return arrival(obj.eta)

    @admin.display(description="available")
    def available(self, obj):
        return obj.available_quantity


@admin.register(models.Product)
class ProductAdmin(SkuColumn, ReadOnlyAdmin):
    list_display = ("sku_code", "batch_count", "purchased", "allocated", "available", "version")
    search_fields = ("sku",)
    fields = ("sku_code", "version")
    readonly_fields = fields
    inlines = [BatchInline]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                total_batches=Count("batches"),
                total_purchased=Sum("batches__purchased_quantity"),
                total_allocated=Sum("batches__allocated_quantity"),
                total_available=Sum("batches__purchased_quantity")
                - Sum("batches__allocated_quantity"),
            )
        )

    @admin.display(description="version", ordering="version_number")
    def version(self, obj):
        return obj.version_number

    @admin.display(description="batches", ordering="total_batches")
    def batch_count(self, obj):
        return obj.total_batches

    @admin.display(description="purchased", ordering="total_purchased")
    def purchased(self, obj):
        return obj.total_purchased or 0

    @admin.display(description="allocated", ordering="total_allocated")
    def allocated(self, obj):
        return obj.total_allocated or 0

    @admin.display(description="available", ordering="total_available")
    def available(self, obj):
        return obj.total_available or 0

    def change_view(self, request, object_id, form_url="", extra_context=None):
        sku = unquote(object_id)
        links = {
            "add_batch_url": reverse("admin:allocation_batch_add") + "?" + urlencode({"sku": sku}),
            "allocations_url": changelist_url(models.Allocation, sku=sku),
            "events_url": changelist_url(models.StoredEvent, sku=sku),
        }
        return super().change_view(request, object_id, form_url, {**links, **(extra_context or {})})


class ArrivalFilter(admin.SimpleListFilter):
    title = "arrival"
    parameter_name = "arrival"

    def lookups(self, request, model_admin):
        return [("warehouse", "In the warehouse"), ("incoming", "Incoming (has an ETA)")]

    def queryset(self, request, queryset):
        if self.value() == "warehouse":
            return queryset.filter(eta__isnull=True)
        if self.value() == "incoming":
            return queryset.filter(eta__isnull=False)
        return queryset


@admin.register(models.Batch)
class BatchAdmin(ReadOnlyAdmin):
    """Batches: "Add batch" sends CreateBatch, "Change quantity" sends ChangeBatchQuantity."""

    list_display = ("reference", "sku", "arrives", "purchased", "allocated", "available")
    list_filter = (ArrivalFilter, exact_filter("product", "SKU"))
    search_fields = ("reference", "product__sku")
    ordering = ("product", F("eta").asc(nulls_first=True), "reference")
    list_select_related = ("product",)
    fields = (
        "reference",
        "product",
        "when",
        "purchased_quantity",
        "allocated_quantity",
        "available",
        "order_lines",
    )
    readonly_fields = fields
    change_form_template = "admin/allocation/batch/change_form.html"

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(available_units=F("purchased_quantity") - F("allocated_quantity"))
        )

    # The commands' own permissions, as the API checks them ("allocators" group).
    def has_add_permission(self, request, obj=None):
        return request.user.has_perm(CREATE_BATCH)

    def has_change_quantity_permission(self, request):
        return request.user.has_perm(CHANGE_BATCH_QUANTITY)

    @admin.display(description="SKU", ordering="product")
    def sku(self, obj):
        return nowrap(obj.product_id)

    @admin.display(description="arrival", ordering=F("eta").asc(nulls_first=True))
    def when(self, obj):
        return arrival(obj.eta)

    @admin.display(description="ETA", ordering=F("eta").asc(nulls_first=True))
    def arrives(self, obj):
        return nowrap(f"{obj.eta:%Y-%m-%d}" if obj.eta else "in the warehouse")

    @admin.display(description="purchased", ordering="purchased_quantity")
    def purchased(self, obj):
        return obj.purchased_quantity

    @admin.display(description="allocated", ordering="allocated_quantity")
    def allocated(self, obj):
        return obj.allocated_quantity

    @admin.display(description="available", ordering="available_units")
    def available(self, obj):
        return obj.available_quantity

    @admin.display(description="order lines on this batch")
    def order_lines(self, obj):
        count = obj.allocations.count()
        if not count:
            return "None"
        latest = obj.allocations.order_by("-version")[:10]
        rows = format_html_join(
            "", "<li>{} of {} for order {}</li>", ((a.qty, a.sku, a.orderid) for a in latest)
        )
        more = "the latest 10 of " if count > 10 else ""
        return format_html(
            '<ul class="order-lines">{}</ul><a href="{}">See {}all {} on the allocations list</a>',
            rows,
            changelist_url(models.Allocation, batch__reference=obj.reference),
            more,
            count,
        )

    def get_urls(self):
        view = self.admin_site.admin_view(self.change_quantity_view)
        return [
            path(
                "<path:object_id>/change-quantity/",
                view,
                name="allocation_batch_change_quantity",
            ),
            *super().get_urls(),
        ]

    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        initial = {k: v for k, v in request.GET.items() if k in AddBatchForm.base_fields}
        form = AddBatchForm(posted(request), initial=initial)
        if request.method == "POST" and form.is_valid() and form.dispatch(get_bus()):
            batch = models.Batch.objects.get(reference=form.cleaned_data["ref"])
            self.log_addition(request, batch, "Created with the CreateBatch command.")
            self.message_user(
                request,
                format_html(
                    'Batch {} created ({} units of {}, {}). <a href="{}">See its events</a>.',
                    batch.reference,
                    batch.purchased_quantity,
                    batch.product_id,
                    arrival(batch.eta),
                    changelist_url(models.StoredEvent, correlation_id=form.correlation_id),
                ),
                messages.SUCCESS,
            )
            return redirect(change_url(batch))
        return self.render_command_form(
            request,
            form,
            title="Add batch",
            submit="Create batch",
            intro="The batch is created by the CreateBatch command, as through the API: its "
            "BatchCreated event appears in the event log, and order lines that were out of "
            "stock are not allocated automatically.",
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        batch = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if batch is not None and self.has_change_quantity_permission(request):
            form = ChangeQuantityForm(
                batch_ref=batch.reference, initial={"qty": batch.purchased_quantity}
            )
            context.update(self.change_quantity_context(request, batch, form))
            # The page's one form is the change-quantity form; the batch's fields are text.
            form_url = context["change_quantity_url"]
        if batch is not None:
            context["events_url"] = changelist_url(models.StoredEvent, sku=batch.product_id)
        return super().change_view(request, object_id, form_url, context)

    def change_quantity_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        batch = self.get_object(request, unquote(object_id))
        if batch is None:
            raise Http404(f"No batch with id {object_id}")
        if not self.has_change_quantity_permission(request):
            raise PermissionDenied
        form = ChangeQuantityForm(
            posted(request),
            batch_ref=batch.reference,
            initial={"qty": batch.purchased_quantity},
        )
        if request.method == "POST" and form.is_valid() and form.dispatch(get_bus()):
            self.report_quantity_change(request, batch, form)
            return redirect(change_url(batch))
        context = {
            **self.admin_site.each_context(request),
            **self.change_quantity_context(request, batch, form),
            "title": f"Change the quantity of batch {batch.reference}",
            "opts": self.opts,
            "original": batch,
            "has_view_permission": self.has_view_permission(request, batch),
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/allocation/batch/change_quantity.html", context)

    def change_quantity_context(self, request, batch, form: ChangeQuantityForm) -> dict:
        return {
            "quantity_form": form,
            "quantity_adminform": helpers.AdminForm(form, [(None, {"fields": ["qty"]})], {}),
            "quantity_errors": helpers.AdminErrorList(form, []),
            "change_quantity_url": reverse(
                "admin:allocation_batch_change_quantity", args=[batch.pk]
            ),
            "batch": batch,
        }

    def report_quantity_change(self, request, batch, form: ChangeQuantityForm) -> None:
        before, after = batch.purchased_quantity, form.cleaned_data["qty"]
        self.log_change(
            request,
            batch,
            f"Changed the quantity purchased from {before} to {after} "
            "with the ChangeBatchQuantity command.",
        )
        moved = models.StoredEvent.objects.filter(
            correlation_id=form.correlation_id, type="Deallocated"
        ).count()
        if moved:
            lines = f"{moved} order line{'s' if moved != 1 else ''} no longer fitted"
            outcome = f"{lines} and {'were' if moved != 1 else 'was'} sent to be reallocated"
        else:
            outcome = "every order line still fits"
        self.message_user(
            request,
            format_html(
                'Batch {}: quantity purchased changed from {} to {}; {}. <a href="{}">'
                "See the events</a>.",
                batch.reference,
                before,
                after,
                outcome,
                changelist_url(models.StoredEvent, correlation_id=form.correlation_id),
            ),
            messages.SUCCESS,
        )

    def render_command_form(
        self, request, form: CommandForm, title: str, submit: str, intro: str
    ) -> HttpResponse:
        fieldsets = [(None, {"fields": list(form.fields)})]
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "intro": intro,
            "submit_label": submit,
            "opts": self.opts,
            "adminform": helpers.AdminForm(form, fieldsets, {}),
            "errors": helpers.AdminErrorList(form, []),
            "form": form,
            "media": self.media + form.media,
            "has_view_permission": self.has_view_permission(request),
        }
        return TemplateResponse(request, "admin/allocation/batch/add_form.html", context)


# --- allocations -------------------------------------------------------------------------------


@admin.register(models.Allocation)
class AllocationAdmin(SkuColumn, ReadOnlyAdmin):
    list_display = ("order", "sku_code", "quantity", "batch_link", "when")
    list_filter = (exact_filter("sku", "SKU"), exact_filter("batch__reference", "batch"))
    search_fields = ("orderid", "sku", "batch__reference")
    search_help_text = "Search by order id, SKU or batch reference."
    list_select_related = ("batch",)
    ordering = ("orderid", "sku")
    fields = ("order", "sku_code", "quantity", "batch_link", "when", "version")
    readonly_fields = fields
    actions = ["cancel_allocations"]

    @admin.display(description="order", ordering="orderid")
    def order(self, obj):
        return obj.orderid

    @admin.display(description="quantity", ordering="qty")
    def quantity(self, obj):
        return obj.qty

    def has_cancel_permission(self, request):
        return request.user.has_perm(CANCEL_ALLOCATION)

    @admin.display(description="batch", ordering="batch__reference")
    def batch_link(self, obj):
        return format_html('<a href="{}">{}</a>', change_url(obj.batch), obj.batch.reference)

    @admin.display(description="batch arrival", ordering=F("batch__eta").asc(nulls_first=True))
    def when(self, obj):
        return arrival(obj.batch.eta)

    @admin.action(description="Cancel the selected allocations", permissions=["cancel"])
    def cancel_allocations(self, request, queryset):
        """CancelAllocation for each line: its stock is freed and the line is not reallocated."""
        selected = list(queryset.select_related(None).order_by("orderid", "sku"))
        cancelled, refused = [], []
        for allocation in selected:
            try:
                get_bus().handle(
                    commands.CancelAllocation(orderid=allocation.orderid, sku=allocation.sku)
                )
            except DomainError as error:
                refused.append((allocation, str(error)))
            else:
                cancelled.append(allocation)
        if cancelled:
            LogEntry.objects.log_actions(
                request.user.pk,
                cancelled,
                DELETION,
                change_message="Cancelled with the CancelAllocation command.",
            )
            names = ", ".join(f"{a.orderid}/{a.sku}" for a in cancelled[:10])
            more = f" and {len(cancelled) - 10} more" if len(cancelled) > 10 else ""
            self.message_user(
                request,
                f"Cancelled {len(cancelled)} allocation{'s' if len(cancelled) != 1 else ''}: "
                f"{names}{more}. Their stock is free again.",
                messages.SUCCESS,
            )
        for allocation, reason in refused[:10]:
            self.message_user(
                request,
                f"Could not cancel {allocation.orderid}/{allocation.sku}: {reason}",
                messages.ERROR,
            )
        if len(refused) > 10:
            self.message_user(
                request, f"… and {len(refused) - 10} more could not be cancelled.", messages.ERROR
            )


# --- the event log -----------------------------------------------------------------------------

# One line per event type, in words, from its payload.
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

STATUS_COLOURS = {
    models.Delivery.Status.PENDING: "#b88a00",
    models.Delivery.Status.DONE: "#3c7d22",
    models.Delivery.Status.DEAD: "#ba2121",
    models.Delivery.Status.DISCARDED: "#777",
}


def handler_short_name(handler: str) -> str:
    return handler.rsplit(".", 1)[-1]


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
        get_bus().dispatch_committed(ids)
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
