"""Every endpoint against every kind of caller: who gets in, who is refused, and how.

Callers: anonymous; an authenticated user with no permission; a member of "allocators" (not
staff); a staff superuser. API callers authenticate with a DRF token, and are also logged in
to a session for the admin. A refusal is a 401 or 403 whose body says nothing about the data
(no sku, reference, order id, username, token or secret); a caller who is let in gets the
endpoint's own answer. Then the edges: CSRF on session writes, revoked and malformed tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings as conf
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from allocation import models as orm
from allocation.apps import get_bus
from allocation.domain import commands
from tests.api.conftest import error_code

SKU, BATCH, ORDER = "MATRIX-LAMP-7F3", "matrix-b1-9c2", "matrix-o1-4d8"
PASSWORD = "matrix-password-e61a"
ROLES = ("anonymous", "reader", "allocator", "superuser")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    body: dict[str, Any] | None
    needs: str  # "public", "user", "staff", or the codename of a command permission
    ok: int  # the answer to a caller who is let in

    @property
    def compat(self) -> bool:
        return not self.path.startswith(("/api/", "/admin/", "/health/", "/metrics"))

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


READS = [
    Endpoint("GET", "/api/v1/batches", None, "user", 200),
    Endpoint("GET", f"/api/v1/batches?sku={SKU}", None, "user", 200),
    Endpoint("GET", f"/api/v1/batches/{BATCH}", None, "user", 200),
    Endpoint("GET", "/api/v1/batches/no-such-batch", None, "user", 404),
    Endpoint("GET", f"/api/v1/orders/{ORDER}/allocations", None, "user", 200),
    Endpoint("GET", "/api/v1/stock", None, "user", 200),
    Endpoint("GET", f"/api/v1/stock/{SKU}", None, "user", 200),
    Endpoint("GET", f"/api/v1/events?sku={SKU}", None, "user", 200),
    Endpoint("GET", "/api/v1/deliveries", None, "user", 200),
    Endpoint("GET", f"/allocations/{ORDER}", None, "user", 200),
    Endpoint("GET", "/health/", None, "public", 200),
    Endpoint("GET", "/metrics", None, "public", 200),
    Endpoint("GET", "/api/schema/", None, "public", 200),
    Endpoint("GET", "/api/docs/", None, "public", 200),
    Endpoint("GET", "/admin/", None, "staff", 200),
    Endpoint("GET", "/admin/allocation/batch/", None, "staff", 200),
    Endpoint("GET", "/admin/allocation/storedevent/", None, "staff", 200),
    Endpoint("GET", "/admin/allocation/batch/add/", None, "staff", 200),
]
WRITES = [
    Endpoint("POST", "/api/v1/batches", {"ref": "b2", "sku": SKU, "qty": 5}, "create_batch", 201),
    Endpoint("PATCH", f"/api/v1/batches/{BATCH}", {"qty": 7}, "change_batch_quantity", 200),
    Endpoint(
        "POST", "/api/v1/allocations", {"orderid": "o2", "sku": SKU, "qty": 1}, "allocate", 201
    ),
    Endpoint("DELETE", f"/api/v1/orders/{ORDER}/allocations/{SKU}", None, "cancel_allocation", 204),
    # the book-compatible writes need the same permissions as their /api/v1 twins
    Endpoint(
        "POST", "/add_batch", {"ref": "b3", "sku": SKU, "qty": 2, "eta": None}, "create_batch", 201
    ),
    Endpoint("POST", "/allocate", {"orderid": "o3", "sku": SKU, "qty": 1}, "allocate", 202),
]


def expected(role: str, endpoint: Endpoint) -> int:
    """The status `role` gets from `endpoint`: its answer, or the refusal."""
    if endpoint.needs == "public":
        return endpoint.ok
    if endpoint.needs == "staff":
        return endpoint.ok if role == "superuser" else 302  # to the admin's login page
    if role == "anonymous":
        return 401
    if endpoint.needs == "user" or role in ("allocator", "superuser"):
        return endpoint.ok
    return 403


# --- callers and data ---------------------------------------------------------------------------


@pytest.fixture
def callers(allocators_group) -> dict[str, APIClient]:
    """A client per role: a token for the API, and a session for the admin."""
    users = {
        "reader": User.objects.create_user("matrix-reader", password=PASSWORD),
        "allocator": User.objects.create_user("matrix-allocator", password=PASSWORD),
        "superuser": User.objects.create_superuser("matrix-root", password=PASSWORD),
    }
    users["allocator"].groups.add(allocators_group)
    clients = {"anonymous": APIClient()}
    for role, user in users.items():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        client.force_login(user)
        clients[role] = client
    return clients


def create_stock() -> None:
    bus = get_bus()
    bus.handle(commands.CreateBatch(BATCH, SKU, 10, None))
    bus.handle(commands.Allocate(ORDER, SKU, 2))


@pytest.fixture
def stock_committed(transactional_db):
    create_stock()


@pytest.fixture
def stock_in_test_transaction(db, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):  # the projections run too
        create_stock()


def secrets_and_data() -> list[str]:
    """What a refusal must never show."""
    return [
        SKU,
        BATCH,
        ORDER,
        PASSWORD,
        conf.SECRET_KEY,
        *User.objects.values_list("username", flat=True),
        *Token.objects.values_list("key", flat=True),
    ]


def call(client: APIClient, endpoint: Endpoint):
    return client.generic(
        endpoint.method,
        endpoint.path,
        "" if endpoint.body is None else json.dumps(endpoint.body),
        content_type="application/json",
    )


def check(role: str, endpoint: Endpoint, response) -> None:
    want = expected(role, endpoint)
    assert response.status_code == want, (role, str(endpoint), response.content[:300])
    if want == 302:
        assert response["Location"] == f"/admin/login/?next={endpoint.path}"
        assert response.content == b""
    if want not in (401, 403):
        return
    body = response.content.decode()
    for leak in secrets_and_data():
        assert leak not in body, f"{role} {endpoint}: the refusal shows {leak!r}: {body}"
    if want == 401:
        assert response["WWW-Authenticate"] == "Token"
    if endpoint.compat:
        assert set(response.json()) == {"message"}
    else:
        code = error_code(response)
        assert code == ("not_authenticated" if want == 401 else "permission_denied")
        assert response.json()["error"]["details"] == {}


# --- the matrix ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", READS, ids=str)
@pytest.mark.parametrize("role", ROLES)
def test_reads(callers, stock_in_test_transaction, role, endpoint):
    check(role, endpoint, call(callers[role], endpoint))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("endpoint", WRITES, ids=str)
@pytest.mark.parametrize("role", ROLES)
def test_writes(callers, stock_committed, role, endpoint):
    events = orm.StoredEvent.objects.count()

    response = call(callers[role], endpoint)

    check(role, endpoint, response)
    if response.status_code in (401, 403):
        assert orm.StoredEvent.objects.count() == events  # refused before the command ran


def test_a_refused_caller_learns_nothing_from_a_missing_resource(callers, db):
    """401 and 403 come before any lookup: the answer is the same whether the thing exists."""
    create_stock()
    existing = Endpoint("PATCH", f"/api/v1/batches/{BATCH}", {"qty": 3}, "", 0)
    missing = Endpoint("PATCH", "/api/v1/batches/nothing-here", {"qty": 3}, "", 0)
    for role in ("anonymous", "reader"):
        a, b = call(callers[role], existing), call(callers[role], missing)
        assert (a.status_code, a.json()) == (b.status_code, b.json())


@pytest.mark.parametrize("role", ROLES)
def test_metrics_with_a_token_refuse_every_other_credential(callers, db, settings, role):
    settings.ALLOCATION_METRICS_TOKEN = "metrics-token-5be1"

    response = callers[role].get("/metrics")

    assert response.status_code == 401
    assert "metrics-token-5be1" not in response.content.decode()
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION="Bearer metrics-token-5be1")
    assert bearer.get("/metrics").status_code == 200


# --- CSRF on session writes ---------------------------------------------------------------------

CSRF_WRITES = [
    ("/api/v1/batches", {"ref": "csrf-b", "sku": SKU, "qty": 1}, 201),
    ("/add_batch", {"ref": "csrf-b", "sku": SKU, "qty": 1, "eta": None}, 201),
]


@pytest.fixture
def session_allocator(allocators_group) -> APIClient:
    user = User.objects.create_user("csrf-clerk", password=PASSWORD)
    user.groups.add(allocators_group)
    client = APIClient(enforce_csrf_checks=True)
    assert client.login(username="csrf-clerk", password=PASSWORD)
    return client


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("path", "body", "ok"), CSRF_WRITES)
def test_a_session_write_without_the_csrf_token_is_refused(session_allocator, path, body, ok):
    assert session_allocator.get("/api/v1/stock").status_code == 200  # reads need no token

    refused = session_allocator.post(path, body, format="json")

    assert refused.status_code == 403
    assert "CSRF" in refused.content.decode()
    assert not orm.StoredEvent.objects.exists()

    # with the token from the cookie, the same request goes through
    session_allocator.get("/admin/login/")  # sets the csrftoken cookie
    token = session_allocator.cookies["csrftoken"].value
    accepted = session_allocator.post(path, body, format="json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == ok, accepted.content


@pytest.mark.django_db(transaction=True)
def test_a_wrong_csrf_token_is_refused_too(session_allocator):
    session_allocator.get("/admin/login/")
    response = session_allocator.post(
        "/api/v1/batches",
        {"ref": "b", "sku": SKU, "qty": 1},
        format="json",
        HTTP_X_CSRFTOKEN="x" * 64,
    )
    assert response.status_code == 403
    assert not orm.Batch.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_token_writes_need_no_csrf_token(allocators_group):
    user = User.objects.create_user("csrf-robot")
    user.groups.add(allocators_group)
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    response = client.post("/api/v1/batches", {"ref": "b", "sku": SKU, "qty": 1}, format="json")
    assert response.status_code == 201


# --- tokens and sessions that stop being valid --------------------------------------------------


@pytest.fixture
def token_allocator(allocators_group) -> tuple[User, Token, APIClient]:
    user = User.objects.create_user("robot", password=PASSWORD)
    user.groups.add(allocators_group)
    token = Token.objects.create(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return user, token, client


@pytest.mark.django_db
def test_a_deleted_token_is_refused_on_the_next_request(token_allocator):
    _user, token, client = token_allocator
    key = token.key
    assert client.get("/api/v1/stock").status_code == 200

    token.delete()

    for path in ("/api/v1/stock", f"/allocations/{ORDER}"):
        response = client.get(path)
        assert response.status_code == 401
        assert key not in response.content.decode()
    assert error_code(client.get("/api/v1/stock")) == "authentication_failed"


@pytest.mark.django_db
def test_a_deactivated_users_token_is_refused(token_allocator):
    user, token, client = token_allocator
    user.is_active = False
    user.save()

    response = client.get("/api/v1/stock")

    assert response.status_code == 401
    assert error_code(response) == "authentication_failed"
    assert token.key not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_leaving_the_allocators_group_takes_effect_on_the_next_request(
    token_allocator, allocators_group
):
    user, _token, client = token_allocator
    body = {"ref": "b1", "sku": SKU, "qty": 1}
    assert client.post("/api/v1/batches", body, format="json").status_code == 201

    user.groups.remove(allocators_group)

    response = client.post("/api/v1/batches", {**body, "ref": "b2"}, format="json")
    assert response.status_code == 403
    assert error_code(response) == "permission_denied"


@pytest.mark.django_db
def test_a_password_change_ends_other_sessions(token_allocator):
    user, _token, _client = token_allocator
    browser = APIClient()
    assert browser.login(username=user.username, password=PASSWORD)
    assert browser.get("/api/v1/stock").status_code == 200

    user.set_password("another-long-password-31c")
    user.save()

    assert browser.get("/api/v1/stock").status_code == 401


@pytest.mark.django_db
@pytest.mark.parametrize(
    "header",
    [
        "Token",
        "Token ",
        "Token a b",
        "Token \u00e9\u00e9\u00e9",
        "Token " + "x" * 10_000,
        "Bearer {key}",
        "Basic {key}",
        "Token {key}x",
        "Token {key}\x00",
    ],
)
def test_malformed_or_wrong_authorization_headers_are_401(token_allocator, header):
    _user, token, _client = token_allocator
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header.format(key=token.key))

    response = client.get("/api/v1/stock")

    assert response.status_code == 401
    assert error_code(response) in ("not_authenticated", "authentication_failed")
    assert token.key not in response.content.decode()
