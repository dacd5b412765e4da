"""The event log and the deliveries: read-only, searchable, and a chain can be followed."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from allocation import models as orm
from allocation.domain import commands

pytestmark = pytest.mark.django_db(transaction=True)

EVENTS_URL = reverse("admin:allocation_storedevent_changelist")
DELIVERIES_URL = reverse("admin:allocation_delivery_changelist")


def event_url(event):
    return reverse("admin:allocation_storedevent_change", args=[event.pk])


def rows(response):
    return response.text.count('<tr><th class="field-occurred')


@pytest.fixture
def chain(bus):
    """A quantity change whose Deallocated event leads to an Allocated on another batch."""
    bus.handle(commands.CreateBatch("warehouse", "DESK", 10, None))
    bus.handle(commands.CreateBatch("ship", "DESK", 10, "2031-01-01"))
    bus.handle(commands.Allocate("o1", "DESK", 8))
    bus.handle(commands.ChangeBatchQuantity("warehouse", 5), correlation_id="change-42")
    return {
        "change": orm.StoredEvent.objects.get(type="BatchQuantityChanged"),
        "dealloc": orm.StoredEvent.objects.get(type="Deallocated"),
        "realloc": orm.StoredEvent.objects.filter(type="Allocated").latest("version"),
    }


def test_the_event_list_describes_events_and_links_causes_and_chains(admin_client, chain):
    page = admin_client.get(EVENTS_URL)

    assert page.status_code == 200
    assert rows(page) == 6
    assert "Order o1: 8 allocated to batch ship" in page.text
    assert "Order o1: 8 taken off batch warehouse, to be reallocated" in page.text
    assert "New batch ship: 10 units, arriving 2031-01-01" in page.text
    # the re-allocation links to the event that caused it, every row to its chain
    assert f'<a href="{event_url(chain["dealloc"])}" title="event {chain["dealloc"].pk}">' in (
        page.text
    )
    assert f'href="{EVENTS_URL}?correlation_id=change-42"' in page.text
    assert 'name="_save"' not in page.text and "Add stored event" not in page.text


def test_following_a_chain_from_an_event(admin_client, chain):
    realloc, dealloc, change = chain["realloc"], chain["dealloc"], chain["change"]

    page = admin_client.get(event_url(realloc))

    assert page.status_code == 200
    # its cause, and the whole chain
    assert f'<a href="{event_url(dealloc)}">Deallocated: Order o1: 8 taken off' in page.text
    assert f'<a href="{EVENTS_URL}?correlation_id=change-42">all 3 events of this chain</a>' in (
        page.text
    )
    # the payload, pretty-printed
    assert '<pre class="payload">{\n  &quot;batchref&quot;: &quot;ship&quot;,' in page.text
    # its deliveries, one per handler, with their status
    assert "read model: add allocation" in page.text
    assert "redis: publish line allocated" in page.text
    assert page.text.count(">done</span>") == realloc.deliveries.count() >= 2
    # one step back: the Deallocated event was caused by the command, and led to the Allocated
    cause = admin_client.get(event_url(dealloc))
    assert f'<a href="{event_url(realloc)}">Allocated</a>: Order o1: 8 allocated' in cause.text
    first = admin_client.get(event_url(change))
    assert "the command that started the chain (not an event)" in first.text

    chain_page = admin_client.get(EVENTS_URL, {"correlation_id": "change-42"})
    assert rows(chain_page) == 3
    text = chain_page.text
    # in the order it happened, with the sidebar showing the filter
    assert text.index("Batch warehouse now holds 5") < text.index("taken off batch warehouse")
    assert text.index("taken off batch warehouse") < text.index("8 allocated to batch ship")
    assert "By chain (correlation id)" in text


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"q": "DESK"}, 6),
        ({"q": "deallocated"}, 1),
        ({"q": "change-42"}, 3),
        ({"type": "Allocated"}, 2),
        ({"sku": "LAMP"}, 0),
    ],
)
def test_the_event_log_can_be_searched_and_filtered(admin_client, chain, query, expected):
    response = admin_client.get(EVENTS_URL, query)

    assert response.status_code == 200
    assert rows(response) == expected


def test_the_event_log_finds_an_event_by_its_id(admin_client, chain):
    response = admin_client.get(EVENTS_URL, {"q": str(chain["dealloc"].pk)})
    caused = admin_client.get(EVENTS_URL, {"causation_id": str(chain["dealloc"].pk)})

    assert rows(response) == 1 and "taken off batch warehouse" in response.text
    assert rows(caused) == 1 and "8 allocated to batch ship" in caused.text


@pytest.fixture
def dead_delivery(chain):
    delivery = orm.Delivery.objects.get(
        event=chain["realloc"], handler="redis.publish_line_allocated"
    )
    orm.Delivery.objects.filter(pk=delivery.pk).update(
        status="dead",
        attempts=8,
        last_error="Traceback (most recent call last):\n  File 'x'\n"
        "redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:6379.\n",
    )
    return delivery


def test_the_delivery_list_is_readable(admin_client, dead_delivery):
    page = admin_client.get(DELIVERIES_URL, {"status__exact": "dead"})

    assert page.status_code == 200
    assert page.text.count('class="action-select"') == 1
    assert f'<a href="{event_url(dead_delivery.event)}">Allocated</a><br>' in page.text
    assert "DESK v5" in page.text
    assert ">redis: publish line allocated</span>" in page.text
    assert ">dead</span>" in page.text
    assert "redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:6379." in (
        page.text
    )
    assert "Traceback" not in page.text  # only the last line
    detail = admin_client.get(reverse("admin:allocation_delivery_change", args=[dead_delivery.pk]))
    assert '<pre class="error">Traceback (most recent call last):' in detail.text


def test_retrying_and_discarding_dead_deliveries(admin_client, dead_delivery):
    done = orm.Delivery.objects.filter(status="done").exclude(pk=dead_delivery.pk).first()

    retried = admin_client.post(
        DELIVERIES_URL,
        {"action": "retry_dead", "_selected_action": [dead_delivery.pk, done.pk]},
        follow=True,
    )

    assert "Retrying 1 dead deliveries." in retried.text
    assert "1 of the selected deliveries was not dead and was left alone." in retried.text
    dead_delivery.refresh_from_db()
    assert dead_delivery.status == "done"  # redelivered eagerly, to the running Redis

    orm.Delivery.objects.filter(pk=dead_delivery.pk).update(status="dead")
    discarded = admin_client.post(
        DELIVERIES_URL,
        {"action": "discard_dead", "_selected_action": [dead_delivery.pk]},
        follow=True,
    )
    assert "Discarded 1 dead deliveries." in discarded.text
    dead_delivery.refresh_from_db()
    assert dead_delivery.status == "discarded"


def test_a_pending_delivery_shows_when_it_is_next_tried(admin_client, chain):
    delivery = orm.Delivery.objects.filter(event=chain["change"]).first()
    orm.Delivery.objects.filter(pk=delivery.pk).update(
        status="pending", next_attempt_at=timezone.now() + timedelta(minutes=5)
    )

    page = admin_client.get(DELIVERIES_URL, {"status__exact": "pending"})

    assert ">pending</span>" in page.text
    assert "in 4\xa0minutes" in page.text or "in 5\xa0minutes" in page.text
