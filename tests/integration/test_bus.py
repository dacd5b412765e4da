"""Commands through the real bus on PostgreSQL, with tasks run eagerly after commit."""

from datetime import date

import pytest
from django.core import mail

from allocation import models as orm
from allocation.domain import commands
from allocation.domain.model import InvalidSku
from readmodels.selectors import allocations_for_order

pytestmark = pytest.mark.django_db(transaction=True)


def test_allocate_updates_the_read_model_after_commit(bus):
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    assert bus.handle(commands.Allocate("o1", "LAMP", 3)) == "b1"

    assert allocations_for_order("o1") == [{"sku": "LAMP", "batchref": "b1"}]
    assert set(orm.Delivery.objects.values_list("status", flat=True)) == {"done"}


def test_a_shrinking_batch_reallocates_through_the_deallocated_handler(bus, line_allocated):
    bus.handle(commands.CreateBatch("warehouse", "DESK", 10, None))
    bus.handle(commands.CreateBatch("ship", "DESK", 10, "2030-01-01"))
    bus.handle(commands.Allocate("o1", "DESK", 6))
    bus.handle(commands.Allocate("o2", "DESK", 4))

    bus.handle(commands.ChangeBatchQuantity("warehouse", 7))

    assert allocations_for_order("o1") == [{"sku": "DESK", "batchref": "warehouse"}]
    assert allocations_for_order("o2") == [{"sku": "DESK", "batchref": "ship"}]
    published = line_allocated()
    event_ids = [message.pop("event_id") for message in published]
    assert len(set(event_ids)) == 3  # each message carries its event's id, the dedup key
    assert published == [
        {"orderid": "o1", "sku": "DESK", "qty": 6, "batchref": "warehouse"},
        {"orderid": "o2", "sku": "DESK", "qty": 4, "batchref": "warehouse"},
        {"orderid": "o2", "sku": "DESK", "qty": 4, "batchref": "ship"},
    ]
    # the follow-up Allocate belongs to the same chain as the change that caused it
    change = orm.StoredEvent.objects.get(type="BatchQuantityChanged")
    realloc = orm.StoredEvent.objects.filter(type="Allocated").latest("version")
    dealloc = orm.StoredEvent.objects.get(type="Deallocated")
    assert realloc.correlation_id == change.correlation_id == dealloc.correlation_id
    assert realloc.causation_id == str(dealloc.id)


def test_out_of_stock_sends_an_email(bus, settings):
    settings.OUT_OF_STOCK_EMAIL_RECIPIENTS = ["ops@example.com"]
    bus.handle(commands.CreateBatch("b1", "VASE", 1, None))
    assert bus.handle(commands.Allocate("o1", "VASE", 2)) is None
    # the bus built at startup read the recipients then; the adapter sends to those
    assert [m.subject for m in mail.outbox] == ["Out of stock: VASE"]


def test_unknown_sku_is_an_error_and_writes_nothing(bus):
    with pytest.raises(InvalidSku, match="Invalid sku NOPE"):
        bus.handle(commands.Allocate("o1", "NOPE", 1))
    assert not orm.StoredEvent.objects.exists()


def test_cancel_frees_stock_and_the_view_forgets_the_line(bus):
    bus.handle(commands.CreateBatch("b1", "MUG", 5, None))
    bus.handle(commands.Allocate("o1", "MUG", 5))
    assert bus.handle(commands.CancelAllocation("o1", "MUG")) == "b1"
    assert orm.Batch.objects.get(reference="b1").allocated_quantity == 0
    assert allocations_for_order("o1") == []
    assert bus.handle(commands.Allocate("o2", "MUG", 5)) == "b1"


def test_stock_read_model_follows_batches_and_allocations(bus):
    from readmodels.consistency import CHECKS
    from readmodels.selectors import stock_for_sku

    bus.handle(commands.CreateBatch("a", "RUG", 10, None))
    bus.handle(commands.CreateBatch("b", "RUG", 5, "2030-02-01"))
    bus.handle(commands.CreateBatch("c", "RUG", 5, "2030-01-01"))
    bus.handle(commands.Allocate("o1", "RUG", 6))
    bus.handle(commands.Allocate("o2", "RUG", 4))
    bus.handle(commands.ChangeBatchQuantity("a", 7))  # o2 moves to c
    bus.handle(commands.CancelAllocation("o1", "RUG"))

    assert stock_for_sku("RUG") == {
        "sku": "RUG",
        "purchased": 17,
        "allocated": 4,
        "available": 13,
        "batches": 3,
        "next_eta": date(2030, 1, 1),
    }
    assert [d for check in CHECKS.values() for d in check()] == []
