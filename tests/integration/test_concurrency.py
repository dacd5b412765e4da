"""Many writers on one product: PostgreSQL row locks serialise them; nobody sees an error."""

import threading
from collections import Counter

import pytest
from django.db import connection
from django.db.models import Sum

from allocation import models as orm
from allocation.domain import commands

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 16


def run_in_threads(work, count=THREADS):
    """Run work(i) in `count` threads started together; return (results, errors)."""
    start = threading.Barrier(count)
    results, errors = {}, {}

    def target(i):
        start.wait()
        try:
            results[i] = work(i)
        except Exception as exc:
            errors[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results, errors


def assert_consistent(sku):
    for batch in orm.Batch.objects.filter(product_id=sku):
        assert 0 <= batch.allocated_quantity <= batch.purchased_quantity, batch
        lines = orm.Allocation.objects.filter(batch=batch).aggregate(total=Sum("qty"))["total"]
        assert (lines or 0) == batch.allocated_quantity, batch


def test_sixteen_threads_never_over_allocate_and_never_raise(bus):
    bus.handle(commands.CreateBatch("warehouse", "HOT", 20, None))
    bus.handle(commands.CreateBatch("ship", "HOT", 12, "2030-01-01"))

    def allocate_three(i):
        return [bus.handle(commands.Allocate(f"o{i}-{n}", "HOT", 2)) for n in range(3)]

    results, errors = run_in_threads(allocate_three)

    assert errors == {}
    placed = Counter(ref for refs in results.values() for ref in refs)
    # 48 lines of 2 against 32 units: exactly 16 lines fit, the rest are out of stock
    assert placed == {"warehouse": 10, "ship": 6, None: 32}
    assert_consistent("HOT")
    versions = list(orm.StoredEvent.objects.filter(sku="HOT").values_list("version", flat=True))
    allocated = orm.StoredEvent.objects.filter(sku="HOT", type="Allocated").count()
    assert allocated == 16
    assert max(versions) == 2 + 16  # every change bumped the version exactly once


def test_concurrent_quantity_changes_and_allocations_stay_consistent(bus):
    bus.handle(commands.CreateBatch("a", "MIX", 30, None))
    bus.handle(commands.CreateBatch("b", "MIX", 30, "2030-01-01"))

    def work(i):
        if i % 4 == 0:
            return bus.handle(commands.ChangeBatchQuantity("a", 10 + i))
        return bus.handle(commands.Allocate(f"o{i}", "MIX", 3))

    _, errors = run_in_threads(work)

    assert errors == {}
    assert_consistent("MIX")


def test_concurrent_creation_of_one_new_product_retries_instead_of_failing(bus):
    _, errors = run_in_threads(
        lambda i: bus.handle(commands.CreateBatch(f"batch-{i}", "NEW", 5, None)), count=8
    )

    assert errors == {}
    assert orm.Product.objects.get(sku="NEW").version_number == 8
    assert orm.Batch.objects.filter(product_id="NEW").count() == 8


def test_many_writers_of_one_product_never_lose_an_update(bus):
    """Every allocation reads the counters the previous writer left, however the lock was
    taken (at once, after a wait, or just after another writer let go)."""
    bus.handle(commands.CreateBatch("deep", "CROWDED", 100_000, None))

    def allocate_many(i):
        return [bus.handle(commands.Allocate(f"c{i}-{n}", "CROWDED", 1)) for n in range(60)]

    results, errors = run_in_threads(allocate_many, count=8)

    assert errors == {}
    assert sum(len(r) for r in results.values()) == 480
    assert_consistent("CROWDED")
    assert orm.Batch.objects.get(reference="deep").allocated_quantity == 480
