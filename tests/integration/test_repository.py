"""The repository and unit of work on real PostgreSQL."""

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
