"""Read-side queries. They return plain data and touch only the read tables."""

from readmodels.models import OrderAllocation


def allocations_for_order(orderid: str) -> list[dict[str, str]]:
    """The order's allocated lines as `[{"sku", "batchref"}]`, by sku."""
    return list(
        OrderAllocation.objects.filter(orderid=orderid, batchref__isnull=False)
        .order_by("sku")
        .values("sku", "batchref")
    )
