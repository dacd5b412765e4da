"""Rebuild and check the read models on PostgreSQL after a random history."""

import random

import pytest
from django.core.management import CommandError, call_command

from allocation.domain import commands
from allocation.domain.model import DomainError
from readmodels.models import BatchStock, OrderAllocation

pytestmark = pytest.mark.django_db(transaction=True)


def random_history(bus, seed, steps=150):
    rnd = random.Random(seed)
    skus = ["A", "B", "C"]
    refs = []
    for i in range(6):
        ref = f"batch-{i}"
        eta = None if i % 3 == 0 else f"2030-0{i % 9 + 1}-01"
        bus.handle(commands.CreateBatch(ref, skus[i % 3], rnd.randint(5, 30), eta))
        refs.append(ref)
    for step in range(steps):
        action = rnd.random()
        try:
            if action < 0.6:
                bus.handle(commands.Allocate(f"o{step}", rnd.choice(skus), rnd.randint(1, 6)))
            elif action < 0.8:
                bus.handle(commands.ChangeBatchQuantity(rnd.choice(refs), rnd.randint(1, 30)))
            else:
                victim = rnd.randrange(step or 1)
                bus.handle(commands.CancelAllocation(f"o{victim}", rnd.choice(skus)))
        except DomainError:
            pass  # cancelling a line that is not allocated, and the like


def view_contents():
    return (
        sorted(
            OrderAllocation.objects.filter(batchref__isnull=False).values_list(
                "orderid", "sku", "qty", "batchref"
            )
        ),
        sorted(BatchStock.objects.values_list("reference", "sku", "eta", "purchased", "allocated")),
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_rebuild_replays_the_log_into_the_same_views_and_check_agrees(bus, seed, capsys):
    random_history(bus, seed)
    call_command("check_readmodels")  # the live projections kept up
    live = view_contents()

    call_command("rebuild_readmodels")

    assert view_contents() == live
    assert "match the write side" in capsys.readouterr().out


def test_check_names_the_drift_and_a_rebuild_repairs_it(bus, capsys):
    random_history(bus, seed=3)
    line = OrderAllocation.objects.filter(batchref__isnull=False).first()
    line.delete()
    BatchStock.objects.filter(reference="batch-0").update(purchased=999)

    with pytest.raises(CommandError, match="drifted"):
        call_command("check_readmodels")
    out = capsys.readouterr().out
    assert f"order {line.orderid} {line.sku}: missing from the view" in out
    assert "batch batch-0: purchased view 999" in out

    call_command("rebuild_readmodels", "order_allocations", "batch_stock")
    call_command("check_readmodels")
