"""Compare the read models with the write side they are projected from."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import F

from allocation.models import Allocation, Batch
from readmodels.models import BatchStock, OrderAllocation


def order_allocation_drift() -> Iterator[str]:
    """Describe every order line whose view row differs from the write side."""
    written = {
        (orderid, sku): (qty, batchref)
        for orderid, sku, qty, batchref in Allocation.objects.filter(batch__isnull=False)
        .values_list("orderid", "sku", "qty", "batch__reference")
        .iterator(chunk_size=5000)
    }
    viewed = {
        (orderid, sku): (qty, batchref)
        for orderid, sku, qty, batchref in OrderAllocation.objects.filter(batchref__isnull=False)
        .values_list("orderid", "sku", "qty", "batchref")
        .iterator(chunk_size=5000)
    }
    for key in sorted(written.keys() | viewed.keys()):
        orderid, sku = key
        want, got = written.get(key), viewed.get(key)
        if want == got:
            continue
        if got is None:
            yield f"order {orderid} {sku}: missing from the view (allocated {want[0]} on {want[1]})"
        elif want is None:
            yield f"order {orderid} {sku}: in the view ({got[0]} on {got[1]}) but not allocated"
        else:
            yield (
                f"order {orderid} {sku}: view has {got[0]} on {got[1]}, "
                f"write side {want[0]} on {want[1]}"
            )


def batch_stock_drift() -> Iterator[str]:
    """Describe every batch whose stock row differs from the write side."""
    fields = ("purchased", "allocated", "eta")
    written = {
        ref: rest
        for ref, *rest in Batch.objects.values_list(
            "reference", F("purchased_quantity"), F("allocated_quantity"), "eta"
        ).iterator(chunk_size=5000)
    }
    viewed = {
        ref: rest
        for ref, *rest in BatchStock.objects.values_list("reference", *fields).iterator(
            chunk_size=5000
        )
    }
    for ref in sorted(written.keys() | viewed.keys()):
        want, got = written.get(ref), viewed.get(ref)
        if want == got:
            continue
        if got is None:
            yield f"batch {ref}: missing from the view"
        elif want is None:
            yield f"batch {ref}: in the view but not on the write side"
        else:
            yield f"batch {ref}: " + ", ".join(
                f"{name} view {g} write side {w}"
                for name, g, w in zip(fields, got, want, strict=True)
                if g != w
            )


CHECKS = {"order_allocations": order_allocation_drift, "batch_stock": batch_stock_drift}
