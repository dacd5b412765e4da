"""The write side's /api/v1 bodies. Names are unique across the project (OpenAPI components)."""

from rest_framework import serializers

from allocation.api.serializers import QuantityField
from allocation.api.serializers import ReferenceField as CompatReferenceField
from allocation.domain.events import EVENT_TYPES
from allocation.models import Delivery


class ReferenceField(CompatReferenceField):
    """A reference (batch, sku, order): a JSON string, never a number coerced to one."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class BatchCreateSerializer(serializers.Serializer):
    """`POST /api/v1/batches`, and its 201 answer."""

    ref = ReferenceField()
    sku = ReferenceField()
    qty = QuantityField()
    eta = serializers.DateField(
        allow_null=True, required=False, default=None, help_text="ISO date; null: in stock now"
    )


class BatchQuantityChangeSerializer(serializers.Serializer):
    qty = QuantityField()


class BatchQuantityChangedSerializer(serializers.Serializer):
    ref = ReferenceField()
    qty = QuantityField()


class AllocationCreateSerializer(serializers.Serializer):
    orderid = ReferenceField()
    sku = ReferenceField()
    qty = QuantityField()


class AllocationSerializer(serializers.Serializer):
    """An allocated order line: `POST /api/v1/allocations` and an order's allocations."""

    orderid = ReferenceField()
    sku = ReferenceField()
    qty = QuantityField()
    batchref = ReferenceField()


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable, e.g. out_of_stock")
    message = serializers.CharField()
    details = serializers.DictField(
        help_text="Field errors of a request that failed validation: {field: [messages]}"
    )


class ErrorEnvelopeSerializer(serializers.Serializer):
    error = ErrorSerializer()


# --- the event log and deliveries (operational views of the outbox) ---------------------------


class EventFilterSerializer(serializers.Serializer):
    sku = ReferenceField(required=False)
    type = serializers.ChoiceField(choices=sorted(EVENT_TYPES), required=False)
    correlation_id = serializers.CharField(max_length=64, required=False)


class EventLogEntrySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    sku = serializers.CharField()
    version = serializers.IntegerField()
    payload = serializers.JSONField()
    occurred_at = serializers.DateTimeField()
    correlation_id = serializers.CharField()
    causation_id = serializers.CharField()


class DeliveryFilterSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=Delivery.Status.choices, required=False)
    event = serializers.UUIDField(required=False, help_text="Only this event's deliveries")


class DeliveryStatusSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    event = serializers.UUIDField(source="event_id")
    event_type = serializers.CharField()
    sku = serializers.CharField()
    handler = serializers.CharField()
    status = serializers.ChoiceField(choices=Delivery.Status.choices)
    attempts = serializers.IntegerField()
    last_error = serializers.CharField(allow_blank=True)
    next_attempt_at = serializers.DateTimeField()
    done_at = serializers.DateTimeField(allow_null=True)
