"""Admin for warehouse and ops staff: the write side is read-only here.

Nothing in this package saves a write-side row. Adding a batch, changing its quantity and
cancelling allocations dispatch commands through the bus, like every other client, so the
domain's rules, the event log and the read models see admin changes exactly as API changes.
"""

from django.contrib import admin

from allocation.admin import allocations, batches, deliveries, events, products  # noqa: F401

admin.site.site_header = "Allocation service"
admin.site.site_title = "Allocation admin"
admin.site.index_title = "Stock, allocations and events"
# The index adds a link to the stock overview (readmodels.admin) above the apps.
admin.site.index_template = "allocation/admin/index.html"
