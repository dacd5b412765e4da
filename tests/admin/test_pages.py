"""The stock overview, the read-model pages, and who may see and do what."""

import re

import pytest
from django.urls import reverse

from allocation import models as orm
from allocation.domain import commands
from readmodels.models import OrderAllocation

pytestmark = pytest.mark.django_db(transaction=True)

OVERVIEW_URL = reverse("admin:readmodels_batchstock_overview")


@pytest.fixture
def stock(bus):
    bus.handle(commands.CreateBatch("lamp-1", "LAMP", 10, None))
    bus.handle(commands.CreateBatch("lamp-2", "LAMP", 10, "2031-03-01"))
    bus.handle(commands.CreateBatch("desk-1", "DESK", 4, None))
    bus.handle(commands.Allocate("o1", "LAMP", 5))
    bus.handle(commands.Allocate("o2", "DESK", 4))


def bar_widths(page, sku):
    row = re.search(rf'<tr class="row\d" data-sku="{sku}">(.*?)</tr>', page.text, re.S).group(1)
    return [float(w) for w in re.findall(r'style="width: ([\d.]+)%"', row)]


def test_the_index_links_to_the_stock_overview(admin_client):
    index = admin_client.get(reverse("admin:index"))

    assert index.status_code == 200
    assert f'<a href="{OVERVIEW_URL}">Stock overview</a>' in index.text
    assert "Allocation service" in index.text  # the site header


def test_the_stock_overview_shows_available_against_allocated_per_sku(admin_client, stock):
    page = admin_client.get(OVERVIEW_URL)

    assert page.status_code == 200
    assert "2 SKUs: 24 units purchased, 9 allocated, <strong>15 available</strong>" in page.text
    # allocated, then available, as shares of what was purchased
    assert bar_widths(page, "LAMP") == [25.0, 75.0]
    assert bar_widths(page, "DESK") == [100.0, 0.0]
    assert 'aria-label="DESK: 4 allocated, 0 available of 4"' in page.text
    assert '<span class="flag out">sold out</span>' in page.text
    assert "2031-03-01" in page.text  # LAMP's next arrival
    assert "<script" not in page.text.split('id="content-main"')[1]  # no JS for the chart


def test_the_stock_overview_can_be_searched_and_sorted(admin_client, stock):
    found = admin_client.get(OVERVIEW_URL, {"q": "lam"})
    fewest_first = admin_client.get(OVERVIEW_URL, {"o": "available"})
    nothing = admin_client.get(OVERVIEW_URL, {"q": "sofa"})

    assert 'data-sku="LAMP"' in found.text and 'data-sku="DESK"' not in found.text
    assert fewest_first.text.index('data-sku="DESK"') < fewest_first.text.index('data-sku="LAMP"')
    assert "No SKU contains “sofa”." in nothing.text


def test_the_stock_overview_with_no_stock_says_so(admin_client):
    page = admin_client.get(OVERVIEW_URL)

    assert page.status_code == 200
    assert "No stock yet: add a batch first." in page.text


def test_the_batch_stock_read_model_is_listed_read_only(admin_client, stock):
    page = admin_client.get(reverse("admin:readmodels_batchstock_changelist"))

    assert page.status_code == 200
    assert page.text.count('<tr><th class="field-reference">') == 3
    assert f'href="{OVERVIEW_URL}"' in page.text
    assert "Add batch stock" not in page.text


def test_order_allocations_hide_removed_lines_unless_asked(admin_client, stock, bus):
    bus.handle(commands.CancelAllocation("o2", "DESK"))
    assert OrderAllocation.objects.get(orderid="o2").batchref is None  # the tombstone
    url = reverse("admin:readmodels_orderallocation_changelist")

    allocated = admin_client.get(url)
    removed = admin_client.get(url, {"state": "removed"})
    everything = admin_client.get(url, {"state": "all"})

    def orders(page):
        return re.findall(r'<th class="field-order"><a href="[^"]+">([^<]+)</a>', page.text)

    assert orders(allocated) == ["o1"]
    assert orders(removed) == ["o2"]
    assert "removed (no longer allocated)" in removed.text
    assert orders(everything) == ["o1", "o2"]
    with_counts = admin_client.get(url, {"_facets": "True"})
    assert orders(with_counts) == ["o1"]
    tombstone = OrderAllocation.objects.get(orderid="o2")
    detail = admin_client.get(
        reverse("admin:readmodels_orderallocation_change", args=[tombstone.pk])
    )
    assert 'name="_save"' not in detail.text
    assert admin_client.get(reverse("admin:readmodels_orderallocation_add")).status_code == 403


def test_logging_in_through_the_admin_login_form(client, make_user):
    make_user("ops", perms=["readmodels.view_batchstock"])

    response = client.post(
        reverse("admin:login"),
        {"username": "ops", "password": "a-long-test-password", "next": "/admin/"},
        follow=True,
    )

    assert response.redirect_chain[-1][0] == "/admin/"
    assert "Stock overview" in response.text


ADMIN_URLS = [
    reverse("admin:index"),
    reverse("admin:allocation_batch_add"),
    reverse("admin:allocation_batch_changelist"),
    reverse("admin:allocation_storedevent_changelist"),
    reverse("admin:allocation_delivery_changelist"),
    OVERVIEW_URL,
]


@pytest.mark.parametrize("url", ADMIN_URLS)
def test_people_who_are_not_staff_are_sent_to_the_login_page(client, make_user, url):
    anonymous = client.get(url)
    client.force_login(make_user("customer", staff=False))
    not_staff = client.get(url)

    for response in (anonymous, not_staff):
        assert response.status_code == 302
        assert response.url.startswith(reverse("admin:login"))


def test_people_who_are_not_staff_cannot_run_commands(client, make_user, bus):
    bus.handle(commands.CreateBatch("B-1", "LAMP", 10, None))
    batch = orm.Batch.objects.get()
    client.force_login(make_user("customer", staff=False))

    add = client.post(reverse("admin:allocation_batch_add"), {"ref": "X", "sku": "Y", "qty": 1})
    change = client.post(
        reverse("admin:allocation_batch_change_quantity", args=[batch.pk]), {"qty": 1}
    )

    assert add.status_code == change.status_code == 302
    assert orm.Batch.objects.get().purchased_quantity == 10
    assert orm.StoredEvent.objects.count() == 1


def test_staff_without_the_command_permissions_may_look_but_not_change(client, make_user, bus):
    bus.handle(commands.CreateBatch("B-1", "LAMP", 10, None))
    batch = orm.Batch.objects.get()
    client.force_login(make_user("viewer", perms=["allocation.view_batch"]))

    page = client.get(reverse("admin:allocation_batch_change", args=[batch.pk]))
    add = client.post(reverse("admin:allocation_batch_add"), {"ref": "X", "sku": "Y", "qty": 1})
    change_url = reverse("admin:allocation_batch_change_quantity", args=[batch.pk])
    change = client.post(change_url, {"qty": 1})

    assert page.status_code == 200
    assert "Change quantity" not in page.text
    assert add.status_code == change.status_code == 403
    assert orm.Batch.objects.get().purchased_quantity == 10
    assert orm.StoredEvent.objects.count() == 1


def test_staff_with_the_command_permissions_can_run_them(client, make_user, bus):
    bus.handle(commands.CreateBatch("B-1", "LAMP", 10, None))
    batch = orm.Batch.objects.get()
    client.force_login(
        make_user(
            "allocator",
            perms=[
                "allocation.view_batch",
                "allocation.create_batch",
                "allocation.change_batch_quantity",
            ],
        )
    )

    client.post(reverse("admin:allocation_batch_add"), {"ref": "B-2", "sku": "LAMP", "qty": 3})
    client.post(reverse("admin:allocation_batch_change_quantity", args=[batch.pk]), {"qty": 12})

    assert dict(orm.Batch.objects.values_list("reference", "purchased_quantity")) == {
        "B-1": 12,
        "B-2": 3,
    }
