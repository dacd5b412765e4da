"""Admin: the write side is read-only here; changes go through commands."""

from django.contrib import admin, messages

from allocation import models, sweeper
from allocation.apps import get_bus


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class BatchInline(admin.TabularInline):
    model = models.Batch
    fields = ("reference", "purchased_quantity", "allocated_quantity", "available_quantity", "eta")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(models.Product)
class ProductAdmin(ReadOnlyAdmin):
    list_display = ("sku", "version_number")
    search_fields = ("sku",)
    inlines = [BatchInline]


@admin.register(models.Batch)
class BatchAdmin(ReadOnlyAdmin):
    list_display = ("reference", "product", "purchased_quantity", "allocated_quantity", "eta")
    search_fields = ("reference", "product__sku")


@admin.register(models.Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = ("orderid", "sku", "qty", "batch", "version")
    search_fields = ("orderid", "sku")
    list_select_related = ("batch",)


@admin.register(models.StoredEvent)
class StoredEventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "type", "sku", "version", "correlation_id")
    list_filter = ("type",)
    search_fields = ("sku", "correlation_id", "causation_id", "id")


@admin.register(models.Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("event", "handler", "status", "attempts", "next_attempt_at", "done_at")
    list_filter = ("status", "handler")
    list_select_related = ("event",)
    search_fields = ("event__id", "event__sku", "event__correlation_id")
    readonly_fields = ("event", "handler", "status", "attempts", "next_attempt_at", "done_at")
    fields = (*readonly_fields, "last_error")
    actions = ["retry_dead", "discard_dead"]

    @admin.action(description="Retry the selected dead deliveries")
    def retry_dead(self, request, queryset):
        ids = sweeper.retry(queryset.values_list("pk", flat=True))
        get_bus().dispatch_committed(ids)
        self.message_user(request, f"Retrying {len(ids)} dead deliveries.", messages.SUCCESS)

    @admin.action(description="Discard the selected dead deliveries")
    def discard_dead(self, request, queryset):
        count = sweeper.discard(queryset.values_list("pk", flat=True))
        self.message_user(request, f"Discarded {count} dead deliveries.", messages.SUCCESS)
