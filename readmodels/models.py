"""CQRS read tables, kept by the projections from domain events."""

from django.db import models


class OrderAllocation(models.Model):
    """Where an order line is allocated, as the read side knows it.

    `version` is the product version of the last event applied to the line, so a stale event
    never overwrites newer state. A removed line keeps its row with no batch (a tombstone), so
    a late `Allocated` cannot bring a cancelled line back.
    """

    orderid = models.CharField(max_length=255)
    sku = models.CharField(max_length=255)
    qty = models.PositiveIntegerField()
    batchref = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001 (None = removed)
    version = models.PositiveBigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["orderid", "sku"], name="one_view_row_per_order_line"),
        ]

    def __str__(self) -> str:
        return f"{self.orderid}/{self.sku} -> {self.batchref or '-'}"
