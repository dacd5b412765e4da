"""Products, with their batches inline."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.db.models import Count, F, Sum
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from allocation import models
from allocation.admin.common import (
    ReadOnlyAdmin,
    ReadOnlyInline,
    SkuColumn,
    arrival,
    change_url,
    changelist_url,
)


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
