from django.contrib import admin

from readmodels.models import OrderAllocation


@admin.register(OrderAllocation)
class OrderAllocationAdmin(admin.ModelAdmin):
    list_display = ("orderid", "sku", "qty", "batchref", "version")
    search_fields = ("orderid", "sku")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
