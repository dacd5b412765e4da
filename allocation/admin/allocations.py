"""Allocations: read-only, with an action that cancels through the bus."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin.models import DELETION, LogEntry
from django.db.models import F
from django.utils.html import format_html

from allocation import models
from allocation.admin.common import (
    CANCEL_ALLOCATION,
    ReadOnlyAdmin,
    SkuColumn,
    arrival,
    change_url,
    exact_filter,
)
from allocation.apps import get_bus
from allocation.domain import commands
from allocation.domain.model import DomainError


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

    def get_queryset(self, request):
        # Lines released from their batch keep their row (with no batch); they are not shown.
        return super().get_queryset(request).filter(batch__isnull=False)

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
