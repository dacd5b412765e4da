"""The product repository: loads a Product aggregate, locked, with only the lines a command needs.

Saving compares the aggregate with what was loaded and writes the difference (`Changes`): the
version bump (checked), the changed batches, and the order lines placed or removed. On
PostgreSQL a product is locked and loaded in one statement, and the unit of work writes its
changes with the commit's events and deliveries in one more (allocation/commit_sql.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date

from django.db import connection

from allocation import models as orm
from allocation.domain.model import Allocation, Batch, OrderLine, Product

PRODUCTS = orm.Product._meta.db_table
BATCHES = orm.Batch._meta.db_table
LINES = orm.Allocation._meta.db_table


class StaleProduct(Exception):
    """The product's version moved since it was loaded (only possible without the row lock)."""


@dataclass
class _Snapshot:
    version: int | None  # None: the product is new
    batches: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # ref -> (purchased, allocated)
    batch_ids: dict[str, int] = field(default_factory=dict)
    allocations: dict[str, Allocation] = field(default_factory=dict)
    released: dict[str, int] = field(default_factory=dict)


@dataclass
class Changes:
    """What saving a product writes: the difference between it and what was loaded."""

    sku: str
    version: int
    loaded_version: int | None  # None: the product is new
    new_batches: list[Batch] = field(default_factory=list)
    changed_batches: list[tuple[int, int, int]] = field(default_factory=list)  # pk, purchased,
    # allocated
    new_lines: list[tuple[str, int, str | None, int]] = field(default_factory=list)
    # orderid, qty, batch ref (None: released), version
    changed_lines: list[tuple[str, int | None, str | None, int]] = field(default_factory=list)
    # orderid, qty (None: unchanged), batch ref, version
    batch_ids: dict[str, int] = field(default_factory=dict)  # ref -> pk, of the loaded batches


class DjangoProductRepository:
    def __init__(self) -> None:
        self.seen: list[Product] = []
        self._snapshots: dict[int, _Snapshot] = {}

    def add(self, product: Product) -> None:
        self.seen.append(product)
        self._snapshots[id(product)] = _Snapshot(version=None)

    def get(self, sku: str, orderid: str | None = None) -> Product | None:
        if connection.vendor == "postgresql":
            return self._get_in_one_statement(sku, orderid)
        version = (
            orm.Product.objects.select_for_update()
            .filter(sku=sku)
            .values_list("version_number", flat=True)
            .first()
        )
        if version is None:
            return None
        lines = orm.Allocation.objects.filter(sku=sku, orderid=orderid) if orderid else None
        return self._load(sku, version, lines)

    def _get_in_one_statement(self, sku: str, orderid: str | None) -> Product | None:
        """Lock the product and read its batches and the named line in one round trip.

        The reads see the snapshot their statement started with, and another writer may have
        committed between that and the lock (while this statement waited for it, or in the
        instant before it reached the row). Every change to a product bumps its version, so
        the reads are current exactly when the version the snapshot saw is the locked row's;
        otherwise they are made again, in a statement of their own. The first statement takes
        the lock only if it is free (SKIP LOCKED): a writer that finds it held waits in a
        lean statement rather than have PostgreSQL evaluate the reads twice.
        """
        reads = (
            " (SELECT json_agg(json_build_array(b.id, b.reference, b.purchased_quantity,"
            f"  b.allocated_quantity, b.eta) ORDER BY b.id) FROM {BATCHES} b WHERE b.sku = %s),"
            f" (SELECT json_build_array(a.qty, a.batch_id, a.version) FROM {LINES} a"
            "  WHERE a.sku = %s AND a.orderid = %s)"
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT p.version_number, (SELECT version_number FROM {PRODUCTS}"
                f" WHERE sku = %s),{reads} FROM {PRODUCTS} p WHERE p.sku = %s"
                " FOR UPDATE OF p SKIP LOCKED",
                [sku, sku, sku, orderid, sku],
            )
            row = cursor.fetchone()
            if row is None:  # no such product, or another writer holds it: wait for it
                cursor.execute(
                    f"SELECT version_number FROM {PRODUCTS} WHERE sku = %s FOR UPDATE", [sku]
                )
                locked = cursor.fetchone()
                if locked is None:
                    return None
                row = (locked[0], None, None, None)
            version, seen, batches, line = row
            if seen != version:  # read again, now that the lock is held, in a new snapshot
                cursor.execute(f"SELECT{reads}", [sku, sku, orderid])
                batches, line = cursor.fetchone()
        loaded = [
            (pk, ref, purchased, allocated, date.fromisoformat(eta) if eta else None)
            for pk, ref, purchased, allocated, eta in parse_json(batches) or ()
        ]
        lines = []
        if line is not None:
            qty, batch_id, line_version = parse_json(line)
            lines = [
                orm.Allocation(orderid=orderid, qty=qty, batch_id=batch_id, version=line_version)
            ]
        return self._load(sku, version, lines, batches=loaded)

    def get_by_batchref(self, ref: str, keep: int = 0) -> Product | None:
        row = (
            orm.Product.objects.select_for_update(of=("self",))
            .filter(batches__reference=ref)
            .values_list("sku", "version_number")
            .first()
        )
        if row is None:
            return None
        sku, version = row
        return self._load(sku, version, self._lines_beyond(ref, keep))

    def batch_exists(self, ref: str) -> bool:
        return orm.Batch.objects.filter(reference=ref).exists()

    def _lines_beyond(self, ref: str, keep: int) -> list[orm.Allocation]:
        """The batch's latest lines that stand beyond its first `keep` allocated units.

        Read after the product's lock (a statement of its own sees what committed before it),
        and fetched a few rows at a time: a batch that shrinks by one line reads one line,
        whatever it holds.
        """
        allocated = orm.Batch.objects.values_list("allocated_quantity", flat=True).get(
            reference=ref
        )
        excess = allocated - keep
        lines: list[orm.Allocation] = []
        if excess <= 0:
            return lines
        latest_first = orm.Allocation.objects.filter(batch__reference=ref).order_by(
            "-version", "-orderid"
        )
        for line in latest_first.iterator(chunk_size=20):
            lines.append(line)
            excess -= line.qty
            if excess <= 0:
                break
        return lines

    def _load(self, sku: str, version: int, lines, batches=None) -> Product:
        snapshot = _Snapshot(version=version)
        if batches is None:
            batches = orm.Batch.objects.filter(product_id=sku).values_list(
                "pk", "reference", "purchased_quantity", "allocated_quantity", "eta"
            )
        domain_batches = []
        for pk, ref, purchased, allocated, eta in batches:
            domain_batches.append(Batch(ref, sku, purchased, eta, allocated))
            snapshot.batches[ref] = (purchased, allocated)
            snapshot.batch_ids[ref] = pk
        refs = {pk: ref for ref, pk in snapshot.batch_ids.items()}
        lines = list(lines or ())
        allocations = [
            Allocation(OrderLine(row.orderid, sku, row.qty), refs[row.batch_id], row.version)
            for row in lines
            if row.batch_id is not None
        ]
        released = {row.orderid: row.version for row in lines if row.batch_id is None}
        snapshot.allocations = {a.line.orderid: a for a in allocations}
        snapshot.released = dict(released)
        product = Product(sku, domain_batches, version, allocations, released)
        self.seen.append(product)
        self._snapshots[id(product)] = snapshot
        return product

    def save(self, product: Product) -> None:
        changes = self.changes(product)
        if changes is not None:
            self.write(changes)
            self.saved(product)

    def changes(self, product: Product) -> Changes | None:
        """What saving `product` would write; None when it did not change."""
        snapshot = self._snapshots[id(product)]
        if snapshot.version == product.version_number:
            return None
        changes = Changes(
            product.sku, product.version_number, snapshot.version, batch_ids=snapshot.batch_ids
        )
        for b in product.batches:
            now = (b.purchased_quantity, b.allocated_quantity)
            if b.reference not in snapshot.batches:
                changes.new_batches.append(b)
            elif snapshot.batches[b.reference] != now:
                changes.changed_batches.append((snapshot.batch_ids[b.reference], *now))
        for orderid in sorted(product.allocations.keys() | product.released.keys()):
            before = _line_state(snapshot.allocations, snapshot.released, orderid)
            after = _line_state(product.allocations, product.released, orderid)
            if before == after:
                continue
            qty, batchref, version = after
            if before is None:  # (a line released by the command that placed it has no qty)
                changes.new_lines.append((orderid, qty or 0, batchref, version))
            else:
                changes.changed_lines.append((orderid, qty, batchref, version))
        return changes

    def write(self, changes: Changes) -> None:
        """Write `changes` through the ORM (any database)."""
        if changes.loaded_version is None:
            orm.Product.objects.create(sku=changes.sku, version_number=changes.version)
        else:
            updated = orm.Product.objects.filter(
                sku=changes.sku, version_number=changes.loaded_version
            ).update(version_number=changes.version)
            if updated != 1:
                raise StaleProduct(changes.sku)
        created = orm.Batch.objects.bulk_create(
            orm.Batch(
                reference=b.reference,
                product_id=changes.sku,
                purchased_quantity=b.purchased_quantity,
                allocated_quantity=b.allocated_quantity,
                eta=b.eta,
            )
            for b in changes.new_batches
        )
        changes.batch_ids.update({row.reference: row.pk for row in created})
        for pk, purchased, allocated in changes.changed_batches:
            orm.Batch.objects.filter(pk=pk).update(
                purchased_quantity=purchased, allocated_quantity=allocated
            )
        ids = changes.batch_ids
        orm.Allocation.objects.bulk_create(
            orm.Allocation(
                orderid=orderid,
                sku=changes.sku,
                qty=qty,
                batch_id=ids[ref] if ref else None,
                version=version,
            )
            for orderid, qty, ref, version in changes.new_lines
        )
        for orderid, qty, ref, version in changes.changed_lines:
            fields = {"batch_id": ids[ref] if ref else None, "version": version}
            if qty is not None:
                fields["qty"] = qty
            orm.Allocation.objects.filter(sku=changes.sku, orderid=orderid).update(**fields)

    def saved(self, product: Product) -> None:
        """`product` as it is now is what the database holds (after `write`, or a write of
        its changes elsewhere)."""
        snapshot = self._snapshots[id(product)]
        snapshot.version = product.version_number
        snapshot.batches = {
            b.reference: (b.purchased_quantity, b.allocated_quantity) for b in product.batches
        }
        snapshot.allocations = dict(product.allocations)
        snapshot.released = dict(product.released)


def _line_state(
    allocations: dict[str, Allocation], released: dict[str, int], orderid: str
) -> tuple[int | None, str | None, int] | None:
    """A line's row as saved: (qty, batch ref, version); a released line keeps its row with no
    batch and the version that released it (its qty unchanged), so that a late reallocation
    can tell that the line moved on."""
    if orderid in allocations:
        a = allocations[orderid]
        return (a.line.qty, a.batchref, a.version)
    if orderid in released:
        return (None, None, released[orderid])
    return None


def parse_json(value):
    """A json column read by a raw cursor: parsed already, unless the driver left it text."""
    return json.loads(value) if isinstance(value, str) else value
