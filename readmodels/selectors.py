"""Read-side queries. They return plain data and touch only the read tables."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, F, Min, QuerySet, Sum

from readmodels.models import BatchStock, OrderAllocation


def allocations_for_order(orderid: str) -> list[dict[str, Any]]:
    """The order's allocated lines as `[{"sku", "batchref"}]`, by sku."""
    return list(
        OrderAllocation.objects.filter(orderid=orderid, batchref__isnull=False)
        .order_by("sku")
        .values("sku", "batchref")
    )


def order_lines(orderid: str) -> list[dict[str, Any]]:
    """The order's allocated lines with their quantities: `[{"sku", "qty", "batchref"}]`."""
    return list(
        OrderAllocation.objects.filter(orderid=orderid, batchref__isnull=False)
        .order_by("sku")
        .values("sku", "qty", "batchref")
    )


def stock_by_sku() -> QuerySet:
    """Per sku: purchased, allocated, available, batch count and the next eta."""
    return (
        BatchStock.objects.values("sku")
        .annotate(
            purchased=Sum("purchased"),
            allocated=Sum("allocated"),
            available=Sum("purchased") - Sum("allocated"),
            batches=Count("reference"),
            next_eta=Min("eta"),
        )
        .order_by("sku")
    )


def stock_for_sku(sku: str) -> dict[str, Any] | None:
    return stock_by_sku().filter(sku=sku).first()


def batches(sku: str | None = None) -> QuerySet:
    rows = BatchStock.objects.annotate(available=F("purchased") - F("allocated"))
    if sku:
        rows = rows.filter(sku=sku)
    return rows.order_by("sku", "eta", "reference").values(
        "reference", "sku", "eta", "purchased", "allocated", "available"
    )


def batch_lines(ref: str) -> list[dict[str, Any]]:
    return list(
        OrderAllocation.objects.filter(batchref=ref)
        .order_by("orderid")
        .values("orderid", "sku", "qty")
    )
