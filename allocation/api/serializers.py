from rest_framework import serializers

# Quantities are bounded so that nothing downstream (PostgreSQL integer columns) overflows.
MAX_QTY = 2**31 - 1


class QuantityField(serializers.IntegerField):
    """A positive integer; refuses strings, floats and booleans rather than coercing them."""

    def __init__(self, **kwargs):
        super().__init__(min_value=1, max_value=MAX_QTY, **kwargs)

    def to_internal_value(self, data):
        if type(data) is not int:
            self.fail("invalid")
        return super().to_internal_value(data)


class ReferenceField(serializers.CharField):
    def __init__(self, **kwargs):
        super().__init__(max_length=255, trim_whitespace=False, **kwargs)


class AddBatchCompatSerializer(serializers.Serializer):
    ref = ReferenceField()
    sku = ReferenceField()
    qty = QuantityField()
    eta = serializers.DateField(allow_null=True, required=False, default=None)


class AllocateCompatSerializer(serializers.Serializer):
    orderid = ReferenceField()
    sku = ReferenceField()
    qty = QuantityField()
