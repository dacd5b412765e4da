"""What every admin page here shares: read-only write-side models and small helpers."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

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
