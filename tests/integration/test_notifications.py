"""Notifications on PostgreSQL and Redis: one email per event, failures, the event stream."""

import json
import smtplib

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend

from allocation import models as orm
from allocation.domain import commands
from notifications.models import Notification

pytestmark = pytest.mark.django_db(transaction=True)

SMTP_ERRORS = []


class ScriptedBackend(BaseEmailBackend):
    """Raises the next error in SMTP_ERRORS, then delivers to django.core.mail.outbox."""

    def send_messages(self, messages):
        if SMTP_ERRORS:
            raise SMTP_ERRORS.pop(0)
        mail.outbox.extend(messages)
        return len(messages)


@pytest.fixture
def scripted_smtp(settings):
    settings.EMAIL_BACKEND = f"{__name__}.ScriptedBackend"
    SMTP_ERRORS.clear()
    yield SMTP_ERRORS
    SMTP_ERRORS.clear()


def out_of_stock(bus, orderid="o1"):
    bus.handle(commands.CreateBatch(f"b-{orderid}", "VASE", 1, None))
    assert bus.handle(commands.Allocate(orderid, "VASE", 5)) is None
    return orm.Delivery.objects.get(handler="email.out_of_stock")


def test_one_email_per_event_even_when_the_delivery_runs_again(bus, runner):
    delivery = out_of_stock(bus)

    orm.Delivery.objects.filter(pk=delivery.pk).update(status="pending")  # redelivered
    runner.deliver([delivery.pk])

    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.extra_headers["X-Event-ID"] == str(delivery.event_id)
    sent = Notification.objects.get()
    assert (sent.status, str(sent.event_id), sent.kind) == (
        "sent",
        str(delivery.event_id),
        "out_of_stock_email",
    )
    assert sent.recipients == message.to


def test_a_transient_smtp_error_is_retried_by_the_delivery(bus, runner, scripted_smtp):
    scripted_smtp.append(smtplib.SMTPResponseException(421, b"try again later"))

    delivery = out_of_stock(bus)

    assert (delivery.status, delivery.attempts) == ("pending", 1)
    assert "421" in delivery.last_error
    assert not Notification.objects.exists()
    runner.deliver([delivery.pk])  # the retry, once the backoff is over
    delivery.refresh_from_db()
    assert delivery.status == "done"
    assert Notification.objects.get().status == "sent"
    assert len(mail.outbox) == 1


def test_a_permanent_refusal_is_recorded_and_not_retried(bus, scripted_smtp):
    scripted_smtp.append(
        smtplib.SMTPRecipientsRefused({"stock@example.com": (550, b"no such user")})
    )

    delivery = out_of_stock(bus)

    assert delivery.status == "done"
    failed = Notification.objects.get()
    assert failed.status == "failed"
    assert "no such user" in failed.error
    assert mail.outbox == []


def test_every_event_is_appended_to_the_redis_stream(bus, redis_client, settings):
    stream = settings.ALLOCATION_EVENT_STREAM
    redis_client.delete(stream)
    redis_client.xgroup_create(stream, "integrator", id="0", mkstream=True)

    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))
    bus.handle(commands.Allocate("o1", "LAMP", 2))
    bus.handle(commands.Allocate("o2", "LAMP", 9))

    entries = redis_client.xreadgroup("integrator", "reader-1", {stream: ">"}, count=100)
    [(_, messages)] = entries
    ours = {str(pk) for pk in orm.StoredEvent.objects.values_list("id", flat=True)}
    read = [  # other test runs on this Redis may append to the same stream: keep ours
        (fields[b"type"].decode(), fields[b"event_id"].decode(), json.loads(fields[b"payload"]))
        for _, fields in messages
        if fields[b"event_id"].decode() in ours
    ]
    assert [t for t, _, _ in read] == ["BatchCreated", "Allocated", "OutOfStock"]
    assert {e for _, e, _ in read} == ours
    assert read[1][2] == {"orderid": "o1", "sku": "LAMP", "qty": 2, "batchref": "b1", "version": 2}
