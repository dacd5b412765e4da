"""Hostile input to the admin's command forms: an error on the form, and nothing changed.

tests/admin/test_batches.py covers the ordinary mistakes (a word for a quantity, 0, a missing
field, a long reference). This adds what a hostile or careless user sends: NUL bytes,
exponents, hex, numbers too long to convert, impossible dates, forged object ids, a missing
CSRF token, extra fields that name model columns, and markup in references. After each refusal
the write side, the event log, the deliveries and the admin history are exactly as before.
"""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse

from allocation import models as orm
from allocation.domain import commands

ADD_URL = reverse("admin:allocation_batch_add")
GOOD_BATCH = {"ref": "B-NEW", "sku": "LAMP", "qty": "10", "eta": ""}

WHOLE = "Enter a whole number."
AT_LEAST_1 = "Ensure this value is greater than or equal to 1."
AT_MOST = "Ensure this value is less than or equal to 2147483647."
NUL = "Null characters are not allowed."
DATE = "Enter a valid date."
REQUIRED = "This field is required."


def change_quantity_url(object_id) -> str:
    return reverse("admin:allocation_batch_change_quantity", args=[object_id])


def snapshot() -> dict:
    """Everything a command could have changed."""
    return {
        "products": list(orm.Product.objects.order_by("sku").values_list()),
        "batches": list(orm.Batch.objects.order_by("reference").values_list()),
        "allocations": list(orm.Allocation.objects.order_by("orderid").values_list()),
        "events": orm.StoredEvent.objects.count(),
        "deliveries": orm.Delivery.objects.count(),
        "history": LogEntry.objects.count(),
    }


@pytest.fixture
def lamp(bus):
    bus.handle(commands.CreateBatch("B-1", "LAMP", 10, None))
    bus.handle(commands.Allocate("o1", "LAMP", 4))
    return orm.Batch.objects.get(reference="B-1")


# --- add batch ---------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"ref": "B-\x00"}, NUL),
        ({"sku": "LAMP\x00; DROP TABLE allocation_batch"}, NUL),
        ({"ref": "\t\n "}, REQUIRED),
        ({"sku": "S" * 256}, "Ensure this value has at most 255 characters"),
        ({"qty": "1e3"}, WHOLE),
        ({"qty": "0x10"}, WHOLE),
        ({"qty": "NaN"}, WHOLE),
        ({"qty": "Infinity"}, WHOLE),
        ({"qty": "10 units"}, WHOLE),
        ({"qty": "-0"}, AT_LEAST_1),
        ({"qty": "2147483648"}, AT_MOST),
        ({"qty": "9" * 5000}, WHOLE),  # longer than Python converts to int
        ({"qty": "\x00"}, WHOLE),
        ({"eta": "2031-02-29"}, DATE),
        ({"eta": "0000-01-01"}, DATE),
        ({"eta": "99999-01-01"}, DATE),
        ({"eta": "2031-01-01T00:00:00"}, DATE),
        ({"eta": "2031-01-01' OR '1'='1"}, DATE),
        ({"eta": "\x00"}, DATE),
    ],
)
def test_bad_input_to_add_batch_is_refused_and_changes_nothing(admin_client, lamp, data, error):
    before = snapshot()

    response = admin_client.post(ADD_URL, {**GOOD_BATCH, **data})

    assert response.status_code == 200
    assert error in response.text
    assert "Nothing was created." in response.text
    assert snapshot() == before


# --- change quantity ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("qty", "error"),
    [
        ("-1", AT_LEAST_1),
        ("1.5", WHOLE),
        ("1e3", WHOLE),
        ("0x10", WHOLE),
        ("NaN", WHOLE),
        ("   ", WHOLE),
        ("\x00", WHOLE),
        ("2147483648", AT_MOST),
        ("9" * 5000, WHOLE),
        ("4; DROP TABLE allocation_batch", WHOLE),
    ],
)
def test_bad_input_to_change_quantity_is_refused_and_changes_nothing(
    admin_client, lamp, qty, error
):
    before = snapshot()

    response = admin_client.post(change_quantity_url(lamp.pk), {"qty": qty})

    assert response.status_code == 200
    assert error in response.text
    assert "Nothing was changed." in response.text
    assert snapshot() == before


@pytest.mark.django_db
@pytest.mark.parametrize(
    "object_id",
    ["abc", "1 OR 1=1", "-1", "0", "99999999999999999999", "1.0", "%00", "..%2F..%2Fetc"],
)
def test_a_forged_batch_id_is_not_found_and_changes_nothing(admin_client, lamp, object_id):
    before = snapshot()
    url = reverse("admin:allocation_batch_changelist") + f"{object_id}/change-quantity/"

    response = admin_client.post(url, {"qty": "3"})

    assert response.status_code == 404
    assert snapshot() == before


@pytest.mark.django_db
def test_a_get_with_a_quantity_in_the_query_string_changes_nothing(admin_client, lamp):
    before = snapshot()

    response = admin_client.get(change_quantity_url(lamp.pk), {"qty": "1"})

    assert response.status_code == 200
    assert snapshot() == before


# --- CSRF ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("form", ["add", "change-quantity"])
def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(admin_user, lamp, form):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(admin_user)
    url = ADD_URL if form == "add" else change_quantity_url(lamp.pk)
    page = browser.get(url)
    assert page.status_code == 200
    before = snapshot()

    refused = browser.post(url, {**GOOD_BATCH, "qty": "3"})

    assert refused.status_code == 403
    assert snapshot() == before
    # the page's own token works: the refusal was the missing token, nothing else
    token = browser.cookies["csrftoken"].value
    accepted = browser.post(url, {**GOOD_BATCH, "qty": "3", "csrfmiddlewaretoken": token})
    assert accepted.status_code == 302
    assert snapshot() != before


# --- accepted, but hostile ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_fields_that_name_model_columns_are_ignored(admin_client, lamp):
    response = admin_client.post(
        ADD_URL,
        {
            **GOOD_BATCH,
            "allocated_quantity": "999",
            "purchased_quantity": "1",
            "version_number": "77",
            "product": "EVIL",
            "id": str(lamp.pk),
        },
    )
    assert response.status_code == 302
    created = orm.Batch.objects.get(reference="B-NEW")
    assert (created.product_id, created.purchased_quantity, created.allocated_quantity) == (
        "LAMP",
        10,
        0,
    )
    assert orm.Product.objects.get(sku="LAMP").version_number == 3
    assert not orm.Product.objects.filter(sku="EVIL").exists()

    admin_client.post(change_quantity_url(lamp.pk), {"qty": "8", "ref": "B-NEW", "id": "1"})

    quantities = dict(orm.Batch.objects.values_list("reference", "purchased_quantity"))
    assert quantities == {"B-1": 8, "B-NEW": 10}  # the batch of the URL, and only it


MARKUP = '<script>alert("ref")</script><img src=x onerror=alert(1)>'


@pytest.mark.django_db(transaction=True)
def test_markup_in_references_is_stored_as_typed_and_shown_escaped(admin_client):
    response = admin_client.post(
        ADD_URL, {**GOOD_BATCH, "ref": MARKUP, "sku": MARKUP + "-sku"}, follow=True
    )

    assert response.status_code == 200
    batch = orm.Batch.objects.get()
    assert (batch.reference, batch.product_id) == (MARKUP, MARKUP + "-sku")
    pages = [
        response,  # the batch page, with the success message
        admin_client.get(reverse("admin:allocation_batch_changelist")),
        admin_client.get(reverse("admin:allocation_product_changelist")),
        admin_client.get(reverse("admin:allocation_storedevent_changelist")),
        admin_client.get(reverse("admin:readmodels_batchstock_overview")),
    ]
    for page in pages:
        assert page.status_code == 200
        assert "<script>alert" not in page.text
        assert "<img src=x" not in page.text
    assert "&lt;script&gt;alert" in response.text
