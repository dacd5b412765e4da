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
        indexes = [models.Index(fields=["batchref"], name="view_line_batch")]

    def __str__(self) -> str:
        return f"{self.orderid}/{self.sku} -> {self.batchref or '-'}"


class BatchStock(models.Model):
    """A batch as the read side knows it: purchased, allocated and eta.

    `purchased` and `version` come from the batch's own events (the newest wins); `allocated`
    is moved by the order-line projection each time a line moves onto or off the batch, so it
    is the sum of the view's lines whatever order their events arrived in.
    """

    reference = models.CharField(max_length=255, primary_key=True)
    sku = models.CharField(max_length=255, db_index=True)
    eta = models.DateField(null=True, blank=True)
    purchased = models.PositiveIntegerField(default=0)
    allocated = models.IntegerField(default=0)
    version = models.PositiveBigIntegerField(default=0)

    class Meta:
        verbose_name_plural = "batch stock"

    def __str__(self) -> str:
        return self.reference
