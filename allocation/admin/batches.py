"""Batches: add one and change its quantity through commands."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from allocation import models
from allocation.admin.common import (
    CHANGE_BATCH_QUANTITY,
    CREATE_BATCH,
    ReadOnlyAdmin,
    arrival,
    change_url,
    changelist_url,
    exact_filter,
    nowrap,
    posted,
)
from allocation.apps import get_bus
from allocation.forms import AddBatchForm, ChangeQuantityForm, CommandForm


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
