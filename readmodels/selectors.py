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


def stock_by_sku(sku: str | None = None) -> list[dict[str, Any]]:
    """Per sku: purchased, allocated, available, batch count and the next eta."""
    rows = BatchStock.objects.all() if sku is None else BatchStock.objects.filter(sku=sku)
    totals = (
        rows.values("sku")
        .annotate(
            total_purchased=Sum("purchased"),
            total_allocated=Sum("allocated"),
            batch_count=Count("reference"),
            first_eta=Min("eta"),
        )
        .order_by("sku")
    )
    return [
        {
            "sku": row["sku"],
            "purchased": row["total_purchased"],
            "allocated": row["total_allocated"],
            "available": row["total_purchased"] - row["total_allocated"],
            "batches": row["batch_count"],
            "next_eta": row["first_eta"],
        }
        for row in totals
    ]


def stock_for_sku(sku: str) -> dict[str, Any] | None:
    found = stock_by_sku(sku)
    return found[0] if found else None


def batches(sku: str | None = None) -> QuerySet:
    rows = BatchStock.objects.annotate(available=F("purchased") - F("allocated"))
    if sku:
        rows = rows.filter(sku=sku)
    return rows.order_by("sku", F("eta").asc(nulls_first=True), "reference").values(
        "reference", "sku", "eta", "purchased", "allocated", "available"
    )


def batch_lines(ref: str) -> list[dict[str, Any]]:
    return list(
        OrderAllocation.objects.filter(batchref=ref)
        .order_by("orderid")
        .values("orderid", "sku", "qty")
    )


def batch(ref: str) -> dict[str, Any] | None:
    """One batch's stock (as `batches()` gives it) and its allocated lines, or None."""
    found = batches().filter(reference=ref).first()
    return None if found is None else {**found, "lines": batch_lines(ref)}
