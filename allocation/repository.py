"""The product repository: loads a Product aggregate, locked, with only the lines a command needs.

Saving compares the aggregate with what was loaded and writes the difference: the version bump
(checked), the changed batches, and the order lines placed or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from allocation import models as orm
from allocation.domain.model import Allocation, Batch, OrderLine, Product


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


class DjangoProductRepository:
    def __init__(self) -> None:
        self.seen: list[Product] = []
        self._snapshots: dict[int, _Snapshot] = {}

    def add(self, product: Product) -> None:
        self.seen.append(product)
        self._snapshots[id(product)] = _Snapshot(version=None)

    def get(self, sku: str, orderid: str | None = None) -> Product | None:
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

    def _load(self, sku: str, version: int, lines) -> Product:
        snapshot = _Snapshot(version=version)
        batches = []
        for pk, ref, purchased, allocated, eta in orm.Batch.objects.filter(
            product_id=sku
        ).values_list("pk", "reference", "purchased_quantity", "allocated_quantity", "eta"):
            batches.append(Batch(ref, sku, purchased, eta, allocated))
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
        product = Product(sku, batches, version, allocations, released)
        self.seen.append(product)
        self._snapshots[id(product)] = snapshot
        return product

    def save(self, product: Product) -> None:
        snapshot = self._snapshots[id(product)]
        if snapshot.version == product.version_number:
            return
        if snapshot.version is None:
            orm.Product.objects.create(sku=product.sku, version_number=product.version_number)
        else:
            updated = orm.Product.objects.filter(
                sku=product.sku, version_number=snapshot.version
            ).update(version_number=product.version_number)
            if updated != 1:
                raise StaleProduct(product.sku)
        self._save_batches(product, snapshot)
        self._save_allocations(product, snapshot)
        snapshot.version = product.version_number

    def _save_batches(self, product: Product, snapshot: _Snapshot) -> None:
        new = [b for b in product.batches if b.reference not in snapshot.batches]
        created = orm.Batch.objects.bulk_create(
            orm.Batch(
                reference=b.reference,
                product_id=product.sku,
                purchased_quantity=b.purchased_quantity,
                allocated_quantity=b.allocated_quantity,
                eta=b.eta,
            )
            for b in new
        )
        snapshot.batch_ids.update({row.reference: row.pk for row in created})
        for b in product.batches:
            now = (b.purchased_quantity, b.allocated_quantity)
            if b.reference in snapshot.batches and snapshot.batches[b.reference] != now:
                orm.Batch.objects.filter(pk=snapshot.batch_ids[b.reference]).update(
                    purchased_quantity=b.purchased_quantity, allocated_quantity=b.allocated_quantity
                )
        snapshot.batches = {
            b.reference: (b.purchased_quantity, b.allocated_quantity) for b in product.batches
        }

    def _save_allocations(self, product: Product, snapshot: _Snapshot) -> None:
        """A line's row stays once written: a released line keeps it, with no batch and the
        version that released it, so a late reallocation can tell that the line moved on."""

        def state(allocations: dict[str, Allocation], released: dict[str, int], orderid: str):
            if orderid in allocations:
                a = allocations[orderid]
                return {
                    "batch_id": snapshot.batch_ids[a.batchref],
                    "qty": a.line.qty,
                    "version": a.version,
                }
            if orderid in released:
                return {"batch_id": None, "version": released[orderid]}
            return None

        new = []
        for orderid in product.allocations.keys() | product.released.keys():
            before = state(snapshot.allocations, snapshot.released, orderid)
            after = state(product.allocations, product.released, orderid)
            if before == after:
                continue
            if before is None:  # (a line released by the command that placed it has no qty left)
                new.append(orm.Allocation(orderid=orderid, sku=product.sku, **{"qty": 0, **after}))
            else:
                orm.Allocation.objects.filter(sku=product.sku, orderid=orderid).update(**after)
        orm.Allocation.objects.bulk_create(new)
        snapshot.allocations = dict(product.allocations)
        snapshot.released = dict(product.released)
