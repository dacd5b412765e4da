"""Batches in the admin: the forms dispatch commands; nothing writes a row directly."""

import pytest
from django.urls import reverse

from allocation import models as orm
from allocation.domain import commands
from readmodels.models import BatchStock, OrderAllocation

pytestmark = pytest.mark.django_db(transaction=True)

ADD_URL = reverse("admin:allocation_batch_add")


def change_quantity_url(batch):
    return reverse("admin:allocation_batch_change_quantity", args=[batch.pk])


def test_add_batch_form_creates_the_batch_through_the_domain(admin_client):
    response = admin_client.post(
        ADD_URL, {"ref": "B-100", "sku": "LAMP", "qty": "20", "eta": "2031-05-01"}, follow=True
    )

    batch = orm.Batch.objects.get(reference="B-100")
    assert (batch.product_id, batch.purchased_quantity, str(batch.eta)) == (
        "LAMP",
        20,
        "2031-05-01",
    )
    assert response.redirect_chain[-1][0] == reverse(
        "admin:allocation_batch_change", args=[batch.pk]
    )
    assert "Batch B-100 created (20 units of LAMP, arriving 2031-05-01)" in response.text
    # the domain recorded it, and its handlers ran after the commit
    event = orm.StoredEvent.objects.get(type="BatchCreated")
    assert event.payload == {
        "ref": "B-100",
        "sku": "LAMP",
        "qty": 20,
        "eta": "2031-05-01",
        "version": 1,
    }
    assert BatchStock.objects.get(reference="B-100").purchased == 20
    # the success message links to the chain the command started
    chain = reverse("admin:allocation_storedevent_changelist")
    assert f"{chain}?correlation_id={event.correlation_id}" in response.text


def test_add_batch_without_eta_is_warehouse_stock_and_sku_can_be_prefilled(admin_client):
    page = admin_client.get(ADD_URL, {"sku": "RUG"})
    assert page.status_code == 200
    assert 'name="sku" value="RUG"' in page.text
    assert "Create batch" in page.text

    admin_client.post(ADD_URL, {"ref": "W-1", "sku": "RUG", "qty": "5", "eta": ""})

    assert orm.Batch.objects.get(reference="W-1").eta is None


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"qty": "lots"}, "Enter a whole number."),
        ({"qty": "0"}, "Ensure this value is greater than or equal to 1."),
        ({"qty": "-4"}, "Ensure this value is greater than or equal to 1."),
        ({"qty": "2.5"}, "Enter a whole number."),
        ({"qty": "99999999999"}, "Ensure this value is less than or equal to 2147483647."),
        ({"eta": "2031-02-30"}, "Enter a valid date."),
        ({"eta": "next week"}, "Enter a valid date."),
        ({"ref": ""}, "This field is required."),
        ({"sku": "   "}, "This field is required."),
        ({"ref": "x" * 256}, "Ensure this value has at most 255 characters"),
    ],
)
def test_invalid_input_shows_errors_and_changes_nothing(admin_client, data, error):
    response = admin_client.post(
        ADD_URL, {"ref": "B-1", "sku": "LAMP", "qty": "10", "eta": "", **data}
    )

    assert response.status_code == 200
    assert error in response.text
    assert "Please correct the error below. Nothing was created." in response.text
    assert not orm.Batch.objects.exists()
    assert not orm.Product.objects.exists()
    assert not orm.StoredEvent.objects.exists()


def test_the_domains_refusal_shows_on_the_form(admin_client, bus):
    bus.handle(commands.CreateBatch("B-1", "LAMP", 10, None))

    response = admin_client.post(ADD_URL, {"ref": "B-1", "sku": "DESK", "qty": "3", "eta": ""})

    assert response.status_code == 200
    assert "Batch B-1 already exists" in response.text
    assert list(orm.Batch.objects.values_list("reference", "product_id")) == [("B-1", "LAMP")]
    assert not orm.Product.objects.filter(sku="DESK").exists()
    assert orm.StoredEvent.objects.count() == 1


def test_changing_the_quantity_moves_an_allocation_through_events(admin_client, bus):
    bus.handle(commands.CreateBatch("warehouse", "DESK", 10, None))
    bus.handle(commands.CreateBatch("ship", "DESK", 10, "2031-01-01"))
    bus.handle(commands.Allocate("o1", "DESK", 4))
    bus.handle(commands.Allocate("o2", "DESK", 5))
    warehouse = orm.Batch.objects.get(reference="warehouse")

    response = admin_client.post(change_quantity_url(warehouse), {"qty": "6"}, follow=True)

    assert response.redirect_chain[-1][0] == reverse(
        "admin:allocation_batch_change", args=[warehouse.pk]
    )
    assert (
        "Batch warehouse: quantity purchased changed from 10 to 6; 1 order line no longer "
        "fitted and was sent to be reallocated" in response.text
    )
    # the latest line moved: off the warehouse by Deallocated, onto the ship by its handler
    lines = dict(orm.Allocation.objects.values_list("orderid", "batch__reference"))
    assert lines == {"o1": "warehouse", "o2": "ship"}
    warehouse.refresh_from_db()
    assert (warehouse.purchased_quantity, warehouse.allocated_quantity) == (6, 4)
    dealloc = orm.StoredEvent.objects.get(type="Deallocated")
    realloc = orm.StoredEvent.objects.filter(type="Allocated").latest("version")
    assert realloc.payload["batchref"] == "ship"
    assert realloc.causation_id == str(dealloc.pk)
    assert OrderAllocation.objects.get(orderid="o2").batchref == "ship"
    # the change is in the batch's admin history, with who made it
    history = admin_client.get(reverse("admin:allocation_batch_history", args=[warehouse.pk]))
    assert "Changed the quantity purchased from 10 to 6" in history.text


@pytest.mark.parametrize(
    ("qty", "error"),
    [
        ("0", "Ensure this value is greater than or equal to 1."),
        ("", "This field is required."),
        ("ten", "Enter a whole number."),
        ("3000000000", "Ensure this value is less than or equal to 2147483647."),
    ],
)
def test_a_bad_quantity_shows_on_the_form_and_changes_nothing(admin_client, bus, qty, error):
    bus.handle(commands.CreateBatch("B-1", "LAMP", 10, None))
    batch = orm.Batch.objects.get()

    response = admin_client.post(change_quantity_url(batch), {"qty": qty})

    assert response.status_code == 200
    assert error in response.text
    assert "Nothing was changed." in response.text
    batch.refresh_from_db()
    assert batch.purchased_quantity == 10
    assert list(orm.StoredEvent.objects.values_list("type", flat=True)) == ["BatchCreated"]


def test_the_batch_page_is_read_only_with_the_change_quantity_form(admin_client, bus):
    bus.handle(commands.CreateBatch("B-1", "LAMP", 10, None))
    bus.handle(commands.Allocate("o1", "LAMP", 3))
    batch = orm.Batch.objects.get()
    page_url = reverse("admin:allocation_batch_change", args=[batch.pk])

    page = admin_client.get(page_url)

    assert page.status_code == 200
    assert 'name="_save"' not in page.text  # no raw save
    assert f'action="{change_quantity_url(batch)}"' in page.text
    assert 'name="qty" value="10"' in page.text
    assert "3 of LAMP for order o1" in page.text
    # a raw POST of the model's fields, or a delete, is refused and changes nothing
    raw = admin_client.post(page_url, {"reference": "B-1", "purchased_quantity": "1"})
    assert raw.status_code == 403
    delete = admin_client.post(
        reverse("admin:allocation_batch_delete", args=[batch.pk]), {"post": "yes"}
    )
    assert delete.status_code == 403
    batch.refresh_from_db()
    assert batch.purchased_quantity == 10


def test_the_batch_list_shows_stock_in_allocation_order(admin_client, bus):
    bus.handle(commands.CreateBatch("later", "LAMP", 10, "2031-06-01"))
    bus.handle(commands.CreateBatch("sooner", "LAMP", 10, "2031-01-01"))
    bus.handle(commands.CreateBatch("here", "LAMP", 10, None))
    bus.handle(commands.Allocate("o1", "LAMP", 4))

    page = admin_client.get(reverse("admin:allocation_batch_changelist"))

    assert page.status_code == 200
    text = page.text
    assert text.index(">here<") < text.index(">sooner<") < text.index(">later<")
    assert ">in the warehouse<" in text and ">2031-01-01<" in text
    assert 'class="field-available">6<' in text
    assert "Add batch" in text


def test_the_product_page_shows_its_batches_with_purchased_allocated_and_available(
    admin_client, bus
):
    bus.handle(commands.CreateBatch("B-1", "LAMP", 10, None))
    bus.handle(commands.CreateBatch("B-2", "LAMP", 7, "2031-01-01"))
    bus.handle(commands.Allocate("o1", "LAMP", 4))

    listing = admin_client.get(reverse("admin:allocation_product_changelist"))
    page = admin_client.get(reverse("admin:allocation_product_change", args=["LAMP"]))

    assert 'class="field-available">13<' in listing.text
    assert page.status_code == 200
    for cell in ("field-purchased_quantity", "field-allocated_quantity", "field-available"):
        assert cell in page.text
    assert "<p>6</p>" in page.text  # B-1: 10 purchased, 4 allocated, 6 available
    assert 'name="_save"' not in page.text
    assert "Add a batch of this SKU" in page.text


def test_changing_the_quantity_of_an_unknown_batch_is_not_found(admin_client):
    response = admin_client.post(
        reverse("admin:allocation_batch_change_quantity", args=[999]), {"qty": "3"}
    )

    assert response.status_code == 404
    assert not orm.StoredEvent.objects.exists()


def test_an_empty_submission_shows_what_is_required(admin_client):
    response = admin_client.post(ADD_URL, {})

    assert response.status_code == 200
    assert response.text.count("This field is required.") == 3  # ref, sku, qty; eta is optional
    assert not orm.StoredEvent.objects.exists()
