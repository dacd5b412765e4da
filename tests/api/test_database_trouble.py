"""When PostgreSQL goes away, is restarted, or holds a lock too long: 503 with Retry-After in
each API's own shape, never a 500, and a write that committed is never reported as failed.

The connection is broken for real: another session terminates this test's backend, as a
server restart does to every connection it had.
"""

from __future__ import annotations

import pytest
from django.db import connection, connections

from allocation import database
from allocation.apps import get_bus
from allocation.models import Allocation
from tests.api.conftest import error_code

pytestmark = pytest.mark.django_db(transaction=True)


def other_session():
    """A second connection to the test database, not this thread's."""
    return connections.create_connection("default")


def end_of_request() -> None:
    """What Django does after every request (close_old_connections), which the test client
    leaves out: a broken connection is dropped, and the next request opens a new one."""
    database.heal()


def break_this_connection() -> None:
    """Terminate this thread's backend from another session and wait until it is gone: the
    next query of this thread fails, as during a restart of the server."""
    end_of_request()
    with connection.cursor() as cursor:  # a fresh, checked connection, then its end
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    other = other_session()
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
            assert cursor.fetchone() == (True,)
    finally:
        other.close()


@pytest.fixture(autouse=True)
def _healed_for_teardown():
    yield
    end_of_request()  # the database flush after the test needs a working connection


@pytest.fixture
def stock(batch):
    batch("b1", "LAMP", 10)


def test_the_books_endpoints_answer_503_with_retry_after_when_the_connection_is_gone(
    allocator, stock
):
    break_this_connection()
    response = allocator.post("/allocate", {"orderid": "o1", "sku": "LAMP", "qty": 1})

    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert set(response.json()) == {"message"}
    end_of_request()
    retried = allocator.post("/allocate", {"orderid": "o1", "sku": "LAMP", "qty": 1})
    assert (retried.status_code, retried.json()) == (202, {"batchref": "b1"})


def test_v1_writes_and_reads_answer_503_in_the_envelope(allocator, stock):
    break_this_connection()
    write = allocator.post("/api/v1/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 1})
    assert (write.status_code, error_code(write)) == (503, "database_unavailable")
    assert write["Retry-After"] == "2"

    break_this_connection()
    read = allocator.get("/api/v1/stock/LAMP")
    assert (read.status_code, error_code(read)) == (503, "database_unavailable")
    break_this_connection()
    book_read = allocator.get("/allocations/o1")
    assert book_read.status_code == 503
    assert set(book_read.json()) == {"message"}


def test_pages_outside_the_apis_answer_503_too(client, admin_user):
    client.force_login(admin_user)
    break_this_connection()
    response = client.get("/admin/allocation/batch/")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"


@pytest.fixture
def short_lock_timeout(settings):
    """This thread's connection gets the web processes' limits, with a short lock timeout."""
    settings.ALLOCATION_WEB_LOCK_TIMEOUT = 0.2
    connection.ensure_connection()
    database.limit_web_statements(connection=connection)
    yield
    connection.close()  # the next test's connection starts without the limits


def test_a_lock_held_past_the_lock_timeout_is_a_clean_503_and_the_retry_succeeds(
    allocator, stock, short_lock_timeout
):
    holder = other_session()
    holder.set_autocommit(False)
    try:
        with holder.cursor() as cursor:  # another session holds the product's row lock
            cursor.execute("SELECT 1 FROM allocation_product WHERE sku = 'LAMP' FOR UPDATE")
        book = allocator.post("/allocate", {"orderid": "o1", "sku": "LAMP", "qty": 1})
        v1 = allocator.post("/api/v1/allocations", {"orderid": "o2", "sku": "LAMP", "qty": 1})
    finally:
        holder.rollback()
        holder.close()

    assert (book.status_code, book["Retry-After"], set(book.json())) == (503, "1", {"message"})
    assert (v1.status_code, error_code(v1), v1["Retry-After"]) == (503, "busy", "1")
    end_of_request()
    assert not Allocation.objects.filter(orderid__in=["o1", "o2"]).exists()
    retried = allocator.post("/allocate", {"orderid": "o1", "sku": "LAMP", "qty": 1})
    assert (retried.status_code, retried.json()) == (202, {"batchref": "b1"})


@pytest.fixture
def database_lost_after_commit(monkeypatch):
    """Right after each command commits, the database goes away (waking a worker is the first
    thing after the commit); its deliveries stay pending, as they would with no worker."""
    monkeypatch.setattr(get_bus(), "wake", lambda deliveries: break_this_connection())


def test_a_committed_book_allocation_answers_202_when_the_database_goes_during_the_wait(
    allocator, stock, database_lost_after_commit
):
    response = allocator.post("/allocate", {"orderid": "o1", "sku": "LAMP", "qty": 1})

    assert (response.status_code, response.json()) == (202, {"batchref": "b1"})
    end_of_request()
    assert Allocation.objects.get(orderid="o1").batch.reference == "b1"


def test_a_committed_v1_write_is_reported_as_done_even_if_its_idempotency_record_is_lost(
    allocator, stock, database_lost_after_commit
):
    headers = {"HTTP_IDEMPOTENCY_KEY": "k1", "HTTP_PREFER": "wait=1"}
    body = {"orderid": "o1", "sku": "LAMP", "qty": 1}
    first = allocator.post("/api/v1/allocations", body, **headers)

    assert first.status_code == 201
    assert "Preference-Applied" not in first  # the wait was cut short, the write stands
    # The answer could not be stored; the client's retry with the key runs the command again,
    # which reports the same allocation and changes nothing.
    end_of_request()
    retried = allocator.post("/api/v1/allocations", body, **headers)
    assert (retried.status_code, retried.json()) == (201, first.json())
    end_of_request()
    assert Allocation.objects.filter(orderid="o1").count() == 1
