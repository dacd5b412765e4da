"""Projection handlers: apply domain events to the read tables, in any delivery order.

They run inside the delivery's transaction, so a projection and its delivery's done-mark
commit together. Each row remembers the product version of the last event applied to it, and
an older event changes nothing, so a redelivered or late event is harmless.

One event at a time, or many: inside `applied_together()` the handlers only note what each
event asks for, and the whole set is applied when the block exits, as a few statements (on
PostgreSQL: one multi-row insert of the lines, one upsert of the batches with the summed
change of each). The outcome is the same either way: per line the newest version wins, and a
batch's allocated quantity is the sum of its lines as the view holds them.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date

from django.db import connection

from allocation.domain import events
from readmodels.models import BatchStock, OrderAllocation

LINES = OrderAllocation._meta.db_table
BATCHES = BatchStock._meta.db_table


def add_allocation_to_read_model(event: events.Allocated) -> None:
    _line(event.orderid, event.sku, event.qty, event.batchref, event.version)


def remove_allocation_from_read_model(
    event: events.Deallocated | events.AllocationCancelled,
) -> None:
    _line(event.orderid, event.sku, event.qty, None, event.version)


def add_batch_to_read_model(event: events.BatchCreated) -> None:
    eta = date.fromisoformat(event.eta) if event.eta else None
    _purchase(event.ref, event.sku, event.qty, event.version, created_with_eta=(eta,))


def change_batch_quantity_in_read_model(event: events.BatchQuantityChanged) -> None:
    _purchase(event.ref, event.sku, event.qty, event.version)


# What the book-compatible write endpoints wait for before they answer (read-your-writes).
READ_MODEL_HANDLERS = (
    add_allocation_to_read_model,
    remove_allocation_from_read_model,
    add_batch_to_read_model,
    change_batch_quantity_in_read_model,
)


# --- many at a time -----------------------------------------------------------------------------


@dataclass
class _Line:
    qty: int
    batchref: str | None
    version: int


@dataclass
class _Purchase:
    sku: str
    qty: int
    version: int


@dataclass
class _Together:
    """What the events of a set ask for, newest version first."""

    lines: dict[tuple[str, str], _Line] = field(default_factory=dict)  # (sku, orderid) ->
    purchases: dict[str, _Purchase] = field(default_factory=dict)  # ref ->
    etas: dict[str, tuple[str, date | None]] = field(default_factory=dict)  # ref -> (sku, eta)

    def line(self, orderid: str, sku: str, line: _Line) -> None:
        known = self.lines.get((sku, orderid))
        if known is None or known.version < line.version:
            self.lines[sku, orderid] = line

    def purchase(self, ref: str, purchase: _Purchase) -> None:
        known = self.purchases.get(ref)
        if known is None or known.version < purchase.version:
            self.purchases[ref] = purchase


_collecting: ContextVar[_Together | None] = ContextVar("projections_together", default=None)


@contextlib.contextmanager
def applied_together() -> Iterator[None]:
    """Collect the projections called in the block; apply them as sets when it exits without
    an error (an error discards them all: the caller then runs each event on its own)."""
    together = _Together()
    token = _collecting.set(together)
    try:
        yield
    finally:
        _collecting.reset(token)
    if not (together.lines or together.purchases):
        return
    if connection.vendor == "postgresql":
        _apply_sets(together)
    else:
        _apply_one_by_one(together)


def _line(orderid: str, sku: str, qty: int, batchref: str | None, version: int) -> None:
    together = _collecting.get()
    if together is None:
        _apply_line(orderid, sku, qty, batchref, version)
    else:
        together.line(orderid, sku, _Line(qty, batchref, version))


def _purchase(
    ref: str, sku: str, qty: int, version: int, created_with_eta: tuple[date | None] | None = None
) -> None:
    together = _collecting.get()
    if together is None:
        _ensure_batch(ref, sku)
        if created_with_eta is not None:  # the eta never changes after creation
            BatchStock.objects.filter(reference=ref).update(eta=created_with_eta[0])
        _apply_purchased(ref, qty, version)
    else:
        together.purchase(ref, _Purchase(sku, qty, version))
        if created_with_eta is not None:
            together.etas[ref] = (sku, created_with_eta[0])


def _apply_one_by_one(together: _Together) -> None:
    for (sku, orderid), line in sorted(together.lines.items()):
        _apply_line(orderid, sku, line.qty, line.batchref, line.version)
    for ref, (sku, eta) in sorted(together.etas.items()):
        _ensure_batch(ref, sku)
        BatchStock.objects.filter(reference=ref).update(eta=eta)
    for ref, purchase in sorted(together.purchases.items()):
        _ensure_batch(ref, purchase.sku)
        _apply_purchased(ref, purchase.qty, purchase.version)


def _apply_sets(together: _Together) -> None:
    """The set on PostgreSQL. Rows are locked in one order by everyone, lines by (sku, order
    id) and then batches by reference, so two workers' sets wait for each other instead of
    deadlocking."""
    change: dict[str, int] = defaultdict(int)  # batch ref -> change of its allocated quantity
    sku_of: dict[str, str] = {}
    lines = sorted(together.lines.items())
    with connection.cursor() as cursor:
        if lines:
            cursor.execute(
                f"INSERT INTO {LINES} (orderid, sku, qty, batchref, version)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[],"
                " %s::bigint[]) ON CONFLICT (orderid, sku) DO NOTHING RETURNING orderid, sku",
                _columns(lines),
            )
            inserted = {(sku, orderid) for orderid, sku in cursor.fetchall()}
            for key, line in lines:
                if key in inserted and line.batchref:
                    change[line.batchref] += line.qty
                    sku_of[line.batchref] = key[0]
            known = [(key, line) for key, line in lines if key not in inserted]
            if known:
                _move_known_lines(cursor, known, change, sku_of)
        refs = sorted(change.keys() | together.purchases.keys() | together.etas.keys())
        if refs:
            for ref, purchase in together.purchases.items():
                sku_of[ref] = purchase.sku
            for ref, (sku, _eta) in together.etas.items():
                sku_of[ref] = sku
            purchases = [together.purchases.get(ref) for ref in refs]
            cursor.execute(
                f"INSERT INTO {BATCHES} AS b (reference, sku, eta, purchased, allocated, version)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::date[], %s::int[], %s::int[],"
                " %s::bigint[]) ON CONFLICT (reference) DO UPDATE SET"
                "  allocated = b.allocated + excluded.allocated,"
                "  purchased = CASE WHEN excluded.version > b.version"
                "    THEN excluded.purchased ELSE b.purchased END,"
                "  version = GREATEST(b.version, excluded.version),"
                "  eta = COALESCE(excluded.eta, b.eta)",
                [
                    refs,
                    [sku_of[ref] for ref in refs],
                    [together.etas.get(ref, (None, None))[1] for ref in refs],
                    [p.qty if p else 0 for p in purchases],
                    [change.get(ref, 0) for ref in refs],
                    [p.version if p else 0 for p in purchases],
                ],
            )


def _move_known_lines(cursor, known, change: dict[str, int], sku_of: dict[str, str]) -> None:
    """Lines the view already holds: move each to its newest state, unless it holds a newer
    one. Locked first (a statement of its own: it sees what committed before it)."""
    cursor.execute(
        f"SELECT orderid, sku, qty, batchref, version FROM {LINES}"
        " WHERE (orderid, sku) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
        " ORDER BY sku, orderid FOR UPDATE",
        [[orderid for (_, orderid), _ in known], [sku for (sku, _), _ in known]],
    )
    held = {
        (sku, orderid): (qty, batchref, version) for orderid, sku, qty, batchref, version in cursor
    }
    moved = []
    for key, line in known:
        qty, batchref, version = held[key]
        if version >= line.version:
            continue
        if batchref:
            change[batchref] -= qty
            sku_of[batchref] = key[0]
        if line.batchref:
            change[line.batchref] += line.qty
            sku_of[line.batchref] = key[0]
        moved.append((key, line))
    if moved:
        cursor.execute(
            f"UPDATE {LINES} AS v SET qty = u.qty, batchref = u.batchref, version = u.version"
            " FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[], %s::bigint[])"
            " AS u(orderid, sku, qty, batchref, version)"
            " WHERE v.orderid = u.orderid AND v.sku = u.sku",
            _columns(moved),
        )


def _columns(lines: list[tuple[tuple[str, str], _Line]]) -> list[list]:
    """Lines as the arrays a multi-row statement unnests: orderid, sku, qty, batchref, version."""
    return [
        [orderid for (_, orderid), _ in lines],
        [sku for (sku, _), _ in lines],
        [line.qty for _, line in lines],
        [line.batchref for _, line in lines],
        [line.version for _, line in lines],
    ]


# --- one at a time ------------------------------------------------------------------------------


def _apply_line(orderid: str, sku: str, qty: int, batchref: str | None, version: int) -> None:
    """Move the line to its state at `version`, unless the view already holds a newer one.

    A line with no batch is not allocated: the row stays as a tombstone, so a late event
    older than the removal cannot bring the line back.
    """
    if _insert_line(orderid, sku, qty, batchref, version):
        # The view had no row for the line (the usual case): nothing to move off a batch.
        if batchref:
            _add_to_batch(batchref, sku, qty)
        return
    row = OrderAllocation.objects.select_for_update().get(orderid=orderid, sku=sku)
    if row.version >= version:
        return
    if row.batchref:
        _add_to_batch(row.batchref, sku, -row.qty)
    if batchref:
        _add_to_batch(batchref, sku, qty)
    OrderAllocation.objects.filter(pk=row.pk).update(qty=qty, batchref=batchref, version=version)


# Two upserts in SQL: the ORM has no INSERT ... ON CONFLICT that adds to a column or tells
# whether it inserted.


def _insert_line(orderid: str, sku: str, qty: int, batchref: str | None, version: int) -> bool:
    """Insert the line's row if the view has none; True if it did."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {LINES} (orderid, sku, qty, batchref, version)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (orderid, sku) DO NOTHING RETURNING 1",
            [orderid, sku, qty, batchref, version],
        )
        return cursor.fetchone() is not None


def _add_to_batch(ref: str, sku: str, qty: int) -> None:
    """Add `qty` (negative: take it off) to the batch's allocated count; make its row if the
    batch's own events have not arrived yet."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {BATCHES} (reference, sku, eta, purchased, allocated, version)"
            " VALUES (%s, %s, NULL, 0, %s, 0) ON CONFLICT (reference)"
            f" DO UPDATE SET allocated = {BATCHES}.allocated + excluded.allocated",
            [ref, sku, qty],
        )


def _ensure_batch(ref: str, sku: str) -> None:
    """The batch's row, empty until its own events arrive (a line may get there first)."""
    BatchStock.objects.bulk_create([BatchStock(reference=ref, sku=sku)], ignore_conflicts=True)


def _apply_purchased(ref: str, qty: int, version: int) -> None:
    BatchStock.objects.filter(reference=ref, version__lt=version).update(
        purchased=qty, version=version
    )
