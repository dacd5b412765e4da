"""Admin for the read side: read-only views of the projections, and the stock overview page."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import F
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html

from allocation.admin.common import ReadOnlyAdmin  # projections are kept by their handlers
from readmodels import selectors
from readmodels.models import BatchStock, OrderAllocation

# Below this share of its purchased stock still available, a sku is flagged as running low.
LOW_STOCK_SHARE = 0.1
SKUS_PER_PAGE = 100


class LineStateFilter(admin.SimpleListFilter):
    """Removed lines stay as tombstones (no batch); they are hidden unless asked for."""

    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("removed", "Removed (cancelled or moved off)"), ("all", "All, with removed")]

    def choices(self, changelist):
        yield {
            "selected": self.value() is None,
            "query_string": changelist.get_query_string(remove=[self.parameter_name]),
            "display": "Allocated",
        }
        for value, label in self.lookup_choices:
            yield {
                "selected": self.value() == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset.filter(batchref__isnull=False)
        if self.value() == "removed":
            return queryset.filter(batchref__isnull=True)
        return queryset


@admin.register(OrderAllocation)
class OrderAllocationAdmin(ReadOnlyAdmin):
    list_display = ("order", "sku", "quantity", "batch", "version")
    list_filter = (LineStateFilter,)
    search_fields = ("orderid", "sku", "batchref")
    search_help_text = "Search by order id, SKU or batch reference."
    ordering = ("orderid", "sku")
    fields = ("order", "sku", "quantity", "batch", "version")
    readonly_fields = fields

    @admin.display(description="order", ordering="orderid")
    def order(self, obj):
        return obj.orderid

    @admin.display(description="quantity", ordering="qty")
    def quantity(self, obj):
        return obj.qty if obj.batchref else "—"

    @admin.display(description="batch", ordering="batchref")
    def batch(self, obj):
        if obj.batchref:
            return obj.batchref
        return format_html('<span class="quiet">{}</span>', "removed (no longer allocated)")


@admin.register(BatchStock)
class BatchStockAdmin(ReadOnlyAdmin):
    list_display = ("reference", "sku", "arrival", "purchased", "allocated", "available")
    search_fields = ("reference", "sku")
    ordering = ("sku", F("eta").asc(nulls_first=True), "reference")
    fields = ("reference", "sku", "arrival", "purchased", "allocated", "available", "version")
    readonly_fields = fields
    change_list_template = "allocation/admin/batchstock_change_list.html"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset.annotate(available_units=F("purchased") - F("allocated"))

    @admin.display(description="arrival", ordering=F("eta").asc(nulls_first=True))
    def arrival(self, obj):
        return f"arriving {obj.eta:%Y-%m-%d}" if obj.eta else "in the warehouse"

    @admin.display(description="available", ordering="available_units")
    def available(self, obj):
        return obj.purchased - obj.allocated

    def get_urls(self):
        overview = self.admin_site.admin_view(self.overview_view)
        return [
            path("overview/", overview, name="readmodels_batchstock_overview"),
            *super().get_urls(),
        ]

    def overview_view(self, request):
        """Per sku: how much of the stock is allocated and how much is still available."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        rows = selectors.stock_by_sku()
        search = request.GET.get("q", "").strip()
        if search:
            rows = [row for row in rows if search.lower() in row["sku"].lower()]
        order = request.GET.get("o", "sku")
        if order == "available":
            rows.sort(key=lambda row: (row["available"], row["sku"]))
        totals = {
            key: sum(row[key] for row in rows) for key in ("purchased", "allocated", "available")
        }
        page = Paginator(rows, SKUS_PER_PAGE).get_page(request.GET.get("p"))
        context = {
            **self.admin_site.each_context(request),
            "title": "Stock overview",
            "subtitle": "Available against allocated, per SKU",
            "opts": self.opts,
            "rows": [{**row, **stock_bar(row)} for row in page],
            "page": page,
            "totals": totals,
            "sku_count": len(rows),
            "search": search,
            "order": order,
        }
        return TemplateResponse(request, "allocation/admin/stock_overview.html", context)


def stock_bar(row: dict[str, Any]) -> dict[str, Any]:
    """The widths of a sku's bar (allocated, then available, as % of purchased) and its flag."""
    purchased, allocated, available = row["purchased"], row["allocated"], row["available"]
    if purchased <= 0:
        return {"allocated_pct": 0, "available_pct": 0, "flag": "no stock", "flag_class": "out"}
    allocated_pct = round(min(max(allocated / purchased, 0), 1) * 100, 1)
    available_pct = round(100 - allocated_pct, 1) if available > 0 else 0
    if available < 0:  # the projection has a line whose batch's own event is still on its way
        flag, flag_class = "catching up", "low"
    elif available == 0:
        flag, flag_class = "sold out", "out"
    elif available < purchased * LOW_STOCK_SHARE:
        flag, flag_class = "running low", "low"
    else:
        flag, flag_class = "", ""
    return {
        "allocated_pct": allocated_pct,
        "available_pct": available_pct,
        "flag": flag,
        "flag_class": flag_class,
    }
