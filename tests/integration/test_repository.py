"""The repository and unit of work on real PostgreSQL."""

import json
from datetime import date

import pytest

from allocation import models as orm
from allocation.bootstrap import bootstrap
from allocation.django_unit_of_work import DjangoUnitOfWork
from allocation.domain.model import OrderLine, Product
from allocation.unit_of_work import MessageContext

pytestmark = pytest.mark.django_db(transaction=True)

CONTEXT = MessageContext(correlation_id="corr-1", causation_id="cause-1")


def new_uow():
    return DjangoUnitOfWork(bootstrap().bus.subscriptions, CONTEXT)


def test_a_product_round_trips_with_its_batches_and_the_named_line():
    uow = new_uow()
    with uow:
        product = Product("CHAIR")
        uow.products.add(product)
        product.add_batch("warehouse", 20, None)
        product.add_batch("ship", 10, date(2030, 1, 1))
        uow.commit()

    uow = new_uow()
    with uow:
        product = uow.products.get("CHAIR")
        assert product.allocate(OrderLine("o1", "CHAIR", 5)) == "warehouse"
        uow.commit()

    uow = new_uow()
    with uow:
        product = uow.products.get("CHAIR", orderid="o1")
        assert product.version_number == 3
        assert {b.reference: b.available_quantity for b in product.batches} == {
            "warehouse": 15,
            "ship": 10,
        }
        assert product.batch("ship").eta == date(2030, 1, 1)
        assert product.allocations["o1"].batchref == "warehouse"
        uow.commit()

    assert orm.Allocation.objects.get(orderid="o1").batch.reference == "warehouse"


def test_get_by_batchref_loads_only_the_lines_that_must_go():
    uow = new_uow()
    with uow:
        product = Product("TABLE")
        uow.products.add(product)
        product.add_batch("b1", 10, None)
        for i in range(5):
            product.allocate(OrderLine(f"o{i}", "TABLE", 2))
        uow.commit()

    uow = new_uow()
    with uow:
        product = uow.products.get_by_batchref("b1", keep=7)
        # 10 allocated, keep 7: the two latest lines (4 units) must go, the rest stay unloaded
        assert set(product.allocations) == {"o4", "o3"}
        product.change_batch_quantity("b1", 7)
        uow.commit()

    lines = dict(orm.Allocation.objects.values_list("orderid", "batch__reference"))
    # the lines taken off keep their row, with no batch: a late reallocation can see them
    assert lines == {"o0": "b1", "o1": "b1", "o2": "b1", "o3": None, "o4": None}
    assert orm.Batch.objects.get(reference="b1").allocated_quantity == 6


def test_leaving_without_commit_rolls_back_everything():
    uow = new_uow()
    with uow:
        product = Product("LAMP")
        uow.products.add(product)
        product.add_batch("b1", 10, None)
        # no commit

    assert not orm.Product.objects.exists()
    assert not orm.StoredEvent.objects.exists()


def test_an_error_inside_the_block_rolls_back_aggregate_and_outbox():
    uow = new_uow()
    with pytest.raises(RuntimeError), uow:
        product = Product("LAMP")
        uow.products.add(product)
        product.add_batch("b1", 10, None)
        uow.commit()
        raise RuntimeError("crash after commit() but before the transaction ended")

    assert not orm.Product.objects.exists()
    assert not orm.Batch.objects.exists()
    assert not orm.StoredEvent.objects.exists()
    assert not orm.Delivery.objects.exists()
    assert uow.new_deliveries == []


def test_outbox_rows_commit_with_the_aggregate():
    uow = new_uow()
    with uow:
        product = Product("SOFA")
        uow.products.add(product)
        product.add_batch("b1", 10, None)
        product.allocate(OrderLine("o1", "SOFA", 3))
        uow.commit()

    events = list(orm.StoredEvent.objects.order_by("version").values_list("type", "version"))
    assert events == [("BatchCreated", 1), ("Allocated", 2)]
    allocated = orm.StoredEvent.objects.get(type="Allocated")
    assert allocated.payload == {
        "orderid": "o1",
        "sku": "SOFA",
        "qty": 3,
        "batchref": "b1",
        "version": 2,
    }
    assert (allocated.correlation_id, allocated.causation_id) == ("corr-1", "cause-1")
    handlers = set(allocated.deliveries.values_list("handler", flat=True))
    assert handlers == set(bootstrap().bus.subscriptions["Allocated"])
    assert {d.id for d in uow.new_deliveries} == set(
        orm.Delivery.objects.values_list("pk", flat=True)
    )


def test_the_database_refuses_an_over_allocated_batch():
    from django.db import IntegrityError, transaction

    orm.Product.objects.create(sku="RUG")
    batch = orm.Batch.objects.create(reference="b1", product_id="RUG", purchased_quantity=5)
    with pytest.raises(IntegrityError), transaction.atomic():
        orm.Batch.objects.filter(pk=batch.pk).update(allocated_quantity=6)


# --- the PostgreSQL fast paths: one statement to lock and load, one to write -----------------


def test_a_product_whose_lock_had_to_wait_is_read_as_the_other_writer_left_it():
    """The load reads in the snapshot its lock statement started with; when the lock had to
    wait for another writer, that snapshot is stale and the repository reads again."""
    import threading

    from django.db import connection

    uow = new_uow()
    with uow:
        product = Product("LOCKED")
        uow.products.add(product)
        product.add_batch("b1", 10, None)
        uow.commit()

    holder, waiter = new_uow(), new_uow()
    seen = {}
    locked = threading.Event()

    def wait_for_the_lock():
        try:
            locked.wait(60)
            with waiter:
                got = waiter.products.get("LOCKED", orderid="o1")
                seen["allocated"] = got.batch("b1").allocated_quantity
                seen["line"] = got.allocations.get("o1")
        finally:
            connection.close()

    thread = threading.Thread(target=wait_for_the_lock)
    thread.start()
    with holder:
        product = holder.products.get("LOCKED", orderid="o1")
        product.allocate(OrderLine("o1", "LOCKED", 4))
        locked.set()
        # The waiter's statement has started (its snapshot is older than this commit) once
        # PostgreSQL shows it waiting for this transaction's lock.
        with connection.cursor() as cursor:
            for _ in range(600):
                cursor.execute(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'"
                )
                if cursor.fetchone()[0]:
                    break
                cursor.execute("SELECT pg_sleep(0.05)")
        holder.commit()
    thread.join(60)

    assert seen["allocated"] == 4
    assert seen["line"] is not None and seen["line"].batchref == "b1"


def rows_of(sku: str) -> dict:
    """What the write side holds for `sku`, without ids and times."""
    return {
        "product": list(orm.Product.objects.filter(sku=sku).values_list("version_number")),
        "batches": sorted(
            orm.Batch.objects.filter(product_id=sku).values_list(
                "reference", "purchased_quantity", "allocated_quantity", "eta"
            )
        ),
        "lines": sorted(
            orm.Allocation.objects.filter(sku=sku).values_list(
                "orderid", "qty", "batch__reference", "version"
            )
        ),
        "events": list(
            orm.StoredEvent.objects.filter(sku=sku)
            .order_by("version", "occurred_at", "position")
            .values_list("type", "version", "payload", "position", "correlation_id")
        ),
        "deliveries": sorted(
            orm.Delivery.objects.filter(event__sku=sku).values_list(
                "event__type", "event__version", "handler", "status", "attempts"
            )
        ),
    }


def test_the_one_statement_commit_writes_what_the_orm_writes(monkeypatch):
    from allocation import commit_sql
    from allocation.domain import commands

    wiring = bootstrap(wake=[].extend)

    def scenario(sku: str) -> None:
        handle = wiring.bus.handle
        handle(commands.CreateBatch(f"{sku}-now", sku, 10, None), correlation_id="c")
        handle(commands.CreateBatch(f"{sku}-later", sku, 10, "2030-01-01"), correlation_id="c")
        handle(commands.Allocate("o1", sku, 6), correlation_id="c")
        handle(commands.Allocate("o2", sku, 3), correlation_id="c")
        handle(commands.Allocate("o3", sku, 50), correlation_id="c")  # out of stock
        handle(commands.Allocate("o1", sku, 6), correlation_id="c")  # the same again
        handle(commands.ChangeBatchQuantity(f"{sku}-now", 7), correlation_id="c")  # o2 goes
        wiring.runner.run_due()  # ...and is reallocated, by the worker, to the later batch
        handle(commands.CancelAllocation("o1", sku), correlation_id="c")
        handle(commands.Allocate("o1", sku, 2), correlation_id="c")  # a released line again
        wiring.runner.run_due()

    scenario("FAST")
    monkeypatch.setattr(commit_sql, "can_write", lambda changes: False)
    scenario("ORM")

    fast = json.loads(json.dumps(rows_of("FAST"), default=str).replace("FAST", "ORM"))
    slow = json.loads(json.dumps(rows_of("ORM"), default=str))
    assert fast == slow
    assert len(slow["events"]) >= 8 and len(slow["deliveries"]) >= 12


@pytest.mark.parametrize("one_statement", [True, False])
def test_in_a_worker_a_commands_writes_still_wait_for_the_disk(monkeypatch, one_statement):
    """Worker processes commit derived writes asynchronously; a command's own writes (a
    reallocation) set synchronous_commit back on for their transaction."""
    from django.db import connection

    from allocation import commit_sql, database

    monkeypatch.setattr(database, "derived_writes_only", True)
    if not one_statement:
        monkeypatch.setattr(commit_sql, "can_write", lambda changes: False)
    with connection.cursor() as cursor:
        cursor.execute("SET synchronous_commit TO off")  # what a worker's connection says
    try:

        def setting() -> str:
            with connection.cursor() as cursor:
                cursor.execute("SHOW synchronous_commit")
                return cursor.fetchone()[0]

        uow = new_uow()
        with uow:
            uow.deliveries.mark_done([])  # derived writes only: the session's default
            assert setting() == "off"
            product = Product("DURABLE")
            uow.products.add(product)
            product.add_batch("b1", 10, None)
            uow.commit()
            assert setting() == "on"  # for this transaction's COMMIT
        assert setting() == "off"
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET synchronous_commit")
