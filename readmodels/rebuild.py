"""Rebuild read models by replaying the event log.

Replaying folds the log into the final state in memory (for each order line and each batch,
its newest event wins, as in the projections), then swaps the table contents in one
transaction. The tables are locked against the live projections for that transaction, while
readers keep seeing the old rows until it commits, so the service never serves a half-built
view. Deliveries that wait on the lock apply afterwards and, being version-checked, change
nothing that the rebuild already holds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import date
from typing import Any

from django.db import connection, transaction

from allocation.models import StoredEvent
from readmodels.models import BatchStock, OrderAllocation

LINE_EVENTS = {"Allocated": True, "Deallocated": False, "AllocationCancelled": False}
BATCH_EVENTS = ("BatchCreated", "BatchQuantityChanged")
Progress = Callable[[int, int], None]


def _replay(types: Iterable[str], progress: Progress) -> Iterable[tuple[str, dict[str, Any]]]:
    events = StoredEvent.objects.filter(type__in=list(types))
    total = events.count()
    for done, row in enumerate(events.values_list("type", "payload").iterator(chunk_size=5000), 1):
        yield row
        if done % 1000 == 0 or done == total:
            progress(done, total)


def fold_lines(progress: Progress) -> dict[tuple[str, str], tuple[int, str | None, int]]:
    """(orderid, sku) -> (qty, batchref or None when removed, version) of its newest event."""
    lines: dict[tuple[str, str], tuple[int, str | None, int]] = {}
    for type_name, e in _replay(LINE_EVENTS, progress):
        key = (e["orderid"], e["sku"])
        if key not in lines or lines[key][2] < e["version"]:
            lines[key] = (e["qty"], e["batchref"] if LINE_EVENTS[type_name] else None, e["version"])
    return lines


def fold_batches(progress: Progress) -> dict[str, dict[str, Any]]:
    """ref -> sku, eta, purchased and version of the batch's newest event."""
    batches: dict[str, dict[str, Any]] = {}
    for type_name, e in _replay(BATCH_EVENTS, progress):
        batch = batches.setdefault(e["ref"], {"sku": e["sku"], "eta": None, "version": 0})
        if type_name == "BatchCreated":
            batch["eta"] = date.fromisoformat(e["eta"]) if e["eta"] else None
        if batch["version"] < e["version"]:
            batch.update(purchased=e["qty"], version=e["version"])
    return batches


def _lock(*models) -> None:
    if connection.vendor == "postgresql":
        tables = ", ".join(m._meta.db_table for m in models)
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")


def rebuild(models: set[str], progress: Progress) -> dict[str, int]:
    """Rebuild `order_allocations`, `batch_stock` or both; return the rows written per model."""
    written = {}
    with transaction.atomic(durable=True):
        _lock(OrderAllocation, BatchStock)
        if "order_allocations" in models:
            lines = fold_lines(progress)
            OrderAllocation.objects.all().delete()
            OrderAllocation.objects.bulk_create(
                (
                    OrderAllocation(orderid=o, sku=s, qty=q, batchref=b, version=v)
                    for (o, s), (q, b, v) in lines.items()
                ),
                batch_size=5000,
            )
            written["order_allocations"] = len(lines)
        else:
            lines = {
                (o, s): (q, b, v)
                for o, s, q, b, v in OrderAllocation.objects.values_list(
                    "orderid", "sku", "qty", "batchref", "version"
                ).iterator(chunk_size=5000)
            }
        # A batch's allocated count is the sum of the view's lines on it, in either case.
        allocated: dict[str, int] = defaultdict(int)
        for qty, batchref, _ in lines.values():
            if batchref:
                allocated[batchref] += qty
        if "batch_stock" in models:
            batches = fold_batches(progress)
            BatchStock.objects.all().delete()
            BatchStock.objects.bulk_create(
                (
                    BatchStock(reference=ref, allocated=allocated.get(ref, 0), **b)
                    for ref, b in batches.items()
                ),
                batch_size=5000,
            )
            written["batch_stock"] = len(batches)
        else:
            for ref, count in allocated.items():
                BatchStock.objects.filter(reference=ref).update(allocated=count)
            BatchStock.objects.exclude(reference__in=list(allocated)).update(allocated=0)
    return written


MODELS = ("order_allocations", "batch_stock")
