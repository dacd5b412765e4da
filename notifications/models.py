"""What the service told the outside world, one row per notification it sent or gave up on."""

from django.db import models


class Notification(models.Model):
    class Status(models.TextChoices):
        SENT = "sent"
        FAILED = "failed"  # refused for good (e.g. an unknown recipient); not retried

    event_id = models.UUIDField(help_text="The event this notification is about (its dedup key).")
    kind = models.CharField(max_length=64)
    recipients = models.JSONField()
    subject = models.CharField(max_length=255)
    body = models.TextField()
    status = models.CharField(max_length=8, choices=Status.choices)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["event_id", "kind"], name="one_notification_per_event"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.status} ({self.event_id})"
