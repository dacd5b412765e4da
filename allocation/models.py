"""Write-side tables: products, batches and allocations, and the outbox (event log + deliveries)."""

import uuid

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class Product(models.Model):
    sku = models.CharField(max_length=255, primary_key=True)
    version_number = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return self.sku


class Batch(models.Model):
    reference = models.CharField(max_length=255, unique=True)
    product = models.ForeignKey(
        Product, on_delete=models.PROTECT, related_name="batches", db_column="sku"
    )
    purchased_quantity = models.PositiveIntegerField()
    # A counter kept by the domain, so that no command needs to count the sku's order lines.
    allocated_quantity = models.PositiveIntegerField(default=0)
    eta = models.DateField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "batches"
        # The commands' permissions (the API checks them; the "allocators" group holds them).
        permissions = [
            ("create_batch", "Can create batches (CreateBatch)"),
            ("change_batch_quantity", "Can change a batch's quantity (ChangeBatchQuantity)"),
        ]
        constraints = [
            # The last line of defence: the database refuses an over-allocated batch.
            models.CheckConstraint(
                condition=Q(allocated_quantity__lte=F("purchased_quantity")),
                name="batch_not_over_allocated",
            ),
        ]

    def __str__(self) -> str:
        return self.reference

    @property
    def available_quantity(self) -> int:
        return self.purchased_quantity - self.allocated_quantity


class Allocation(models.Model):
    """An order line placed on a batch; an order line is identified by (orderid, sku).

    A released line (taken off its batch, or cancelled) keeps its row with no batch: ask for
    `batch__isnull=False` to get the lines that are allocated now.
    """

    orderid = models.CharField(max_length=255)
    sku = models.CharField(max_length=255)
    qty = models.PositiveIntegerField()
    # None once the line is released (taken off its batch, or cancelled): the row stays, so a
    # late reallocation can see that the line has changed since.
    batch = models.ForeignKey(
        Batch, on_delete=models.PROTECT, related_name="allocations", null=True, blank=True
    )
    # The product version of the line's last change ("latest first" when a batch shrinks).
    version = models.PositiveBigIntegerField()

    class Meta:
        permissions = [
            ("allocate", "Can allocate order lines (Allocate)"),
            ("cancel_allocation", "Can cancel allocations (CancelAllocation)"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["orderid", "sku"], name="one_allocation_per_order_line"
            ),
        ]
        indexes = [models.Index(fields=["batch", "-version"], name="allocation_batch_latest")]

    def __str__(self) -> str:
        return f"{self.orderid}/{self.sku}"


class StoredEvent(models.Model):
    """The outbox and event log: one row per domain event, written with the change it records."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=64)
    sku = models.CharField(max_length=255)
    version = models.PositiveBigIntegerField()
    payload = models.JSONField()
    occurred_at = models.DateTimeField(default=timezone.now)
    # Its place among the events of its commit, which share `occurred_at`: the order in which
    # the aggregate recorded them (a quantity change, then the lines it takes off).
    position = models.PositiveSmallIntegerField(default=0)
    correlation_id = models.CharField(max_length=64)
    causation_id = models.CharField(max_length=64)

    class Meta:
        ordering = ["occurred_at", "position"]
        indexes = [
            models.Index(fields=["occurred_at", "position"], name="event_log_order"),
            models.Index(fields=["sku", "version"], name="event_sku_version"),
            models.Index(fields=["correlation_id"], name="event_correlation"),
            models.Index(fields=["type", "occurred_at"], name="event_type_time"),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.sku} v{self.version}"


class Delivery(models.Model):
    """One (event, handler) pair: its own state, attempts and error."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        DEAD = "dead"  # out of attempts; waits for an operator to retry or discard it
        DISCARDED = "discarded"

    # No index of its own: the unique (event, handler) index serves lookups by event.
    event = models.ForeignKey(
        StoredEvent, on_delete=models.CASCADE, related_name="deliveries", db_index=False
    )
    handler = models.CharField(max_length=255)
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # When the sweeper takes it, if it is still pending: its lease, or the end of its backoff.
    next_attempt_at = models.DateTimeField(default=timezone.now)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "handler"], name="one_delivery_per_handler"),
        ]
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="delivery_due",
            ),
            # Done rows, nearly all of them, are left out: a done-mark adds no index entry.
            models.Index(fields=["status"], condition=~Q(status="done"), name="delivery_status"),
        ]

    def __str__(self) -> str:
        return f"{self.handler} <- {self.event_id}"


class IdempotencyRecord(models.Model):
    """The first response to a POST that carried an `Idempotency-Key`, per user and key.

    A replay with the same key and the same request gets this response again instead of running
    the command twice; the same key with another request is refused.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # sha256 of the method, path and canonical JSON body of the first request.
    fingerprint = models.CharField(max_length=64)
    status = models.PositiveSmallIntegerField()
    body = models.JSONField(null=True, encoder=DjangoJSONEncoder)
    created = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="one_record_per_user_and_key"),
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.status})"
