"""Allocations in the admin: a read-only list and the cancel action (CancelAllocation)."""

import pytest
from django.contrib.admin.models import DELETION, LogEntry
from django.urls import reverse

from allocation import models as orm
from allocation.admin import allocations as allocation_admin
from allocation.domain import commands
from allocation.domain.model import NotAllocated
from readmodels.models import OrderAllocation

pytestmark = pytest.mark.django_db(transaction=True)

LIST_URL = reverse("admin:allocation_allocation_changelist")


@pytest.fixture
def three_lines(bus):
    bus.handle(commands.CreateBatch("B-1", "LAMP", 10, None))
    bus.handle(commands.CreateBatch("B-2", "DESK", 10, "2031-01-01"))
    bus.handle(commands.Allocate("o1", "LAMP", 3))
    bus.handle(commands.Allocate("o2", "LAMP", 4))
    bus.handle(commands.Allocate("o2", "DESK", 5))


def cancel(client, *allocations):
    return client.post(
        LIST_URL,
        {
            "action": "cancel_allocations",
            "_selected_action": [a.pk for a in allocations],
        },
        follow=True,
    )


def test_the_list_shows_order_sku_quantity_and_batch_and_can_be_searched(admin_client, three_lines):
    page = admin_client.get(LIST_URL)
    found = admin_client.get(LIST_URL, {"q": "o2"})
    by_batch = admin_client.get(LIST_URL, {"q": "B-2"})

    assert page.status_code == 200
    for heading in ("Order", "SKU", "Quantity", "Batch", "Batch arrival"):
        assert f">{heading}</a>" in page.text
    assert page.text.count('class="action-select"') == 3
    assert 'name="_save"' not in page.text and "Add allocation" not in page.text
    assert found.text.count('class="action-select"') == 2
    assert by_batch.text.count('class="action-select"') == 1
    assert "Cancel the selected allocations" in page.text


def test_cancel_action_cancels_each_line_through_the_domain(admin_client, three_lines):
    lamp_o2, desk_o2 = orm.Allocation.objects.filter(orderid="o2").order_by("sku")

    response = cancel(admin_client, lamp_o2, desk_o2)

    assert "Cancelled 2 allocations: o2/DESK, o2/LAMP. Their stock is free again." in (
        response.text
    )
    allocated = orm.Allocation.objects.filter(batch__isnull=False)
    assert list(allocated.values_list("orderid", "sku")) == [("o1", "LAMP")]
    assert orm.Batch.objects.get(reference="B-1").allocated_quantity == 3
    assert orm.Batch.objects.get(reference="B-2").allocated_quantity == 0
    cancelled = orm.StoredEvent.objects.filter(type="AllocationCancelled")
    assert sorted(e.payload["sku"] for e in cancelled) == ["DESK", "LAMP"]
    assert not orm.StoredEvent.objects.filter(type="Allocated", version__gt=3).exists()
    assert set(OrderAllocation.objects.filter(orderid="o2").values_list("batchref", flat=True)) == {
        None
    }
    assert LogEntry.objects.filter(action_flag=DELETION).count() == 2


def test_cancel_action_reports_the_lines_it_could_not_cancel(
    admin_client, three_lines, bus, monkeypatch
):
    class RefusesO1:
        def handle(self, command, correlation_id=None):
            if command.orderid == "o1":
                raise NotAllocated(command.orderid, command.sku)
            return bus.handle(command, correlation_id)

    monkeypatch.setattr(allocation_admin, "get_bus", RefusesO1)
    response = cancel(admin_client, *orm.Allocation.objects.filter(sku="LAMP"))

    assert "Cancelled 1 allocation: o2/LAMP." in response.text
    assert "Could not cancel o1/LAMP: Order o1 has no allocation of LAMP" in response.text
    allocated = orm.Allocation.objects.filter(batch__isnull=False)
    assert list(allocated.values_list("orderid", "sku").order_by("sku")) == [
        ("o2", "DESK"),
        ("o1", "LAMP"),
    ]


def test_cancelling_needs_the_cancel_permission(client, make_user, three_lines):
    viewer = make_user("viewer", perms=["allocation.view_allocation"])
    client.force_login(viewer)

    page = client.get(LIST_URL)
    response = cancel(client, *orm.Allocation.objects.all())

    assert page.status_code == 200
    assert "Cancel the selected allocations" not in page.text
    assert orm.Allocation.objects.count() == 3
    assert not orm.StoredEvent.objects.filter(type="AllocationCancelled").exists()
    assert response.status_code == 200
