from django.contrib import admin

from allocation.admin.common import ReadOnlyAdmin
from notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    """What was sent, to whom, for which event. A log: nothing here can be edited."""

    list_display = ("created_at", "kind", "status", "recipient_list", "subject", "event_id")
    list_filter = ("status", "kind")
    search_fields = ("event_id", "subject", "recipients")
    readonly_fields = ("created_at", "kind", "status", "recipients", "subject", "body", "error")
    fields = ("event_id", *readonly_fields)
    date_hierarchy = "created_at"

    @admin.display(description="to")
    def recipient_list(self, obj: Notification) -> str:
        return ", ".join(obj.recipients)
