"""Who may call what: anonymous 401, reads for any user, each write for its command's permission."""

import pytest
from django.contrib.auth.models import Group, Permission, User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from allocation import models as orm
from allocation.api.v1.permissions import ALLOCATORS_GROUP, COMMAND_PERMISSIONS
from tests.api.conftest import error_code

READS = [
    "/api/v1/batches",
    "/api/v1/batches/b1",
    "/api/v1/orders/o1/allocations",
    "/api/v1/stock",
    "/api/v1/stock/LAMP",
    "/api/v1/events",
    "/api/v1/deliveries",
]
# (method, path, body, the permission it needs, the status it answers when allowed)
WRITES = [
    ("post", "/api/v1/batches", {"ref": "b2", "sku": "LAMP", "qty": 5}, "create_batch", 201),
    ("patch", "/api/v1/batches/b1", {"qty": 7}, "change_batch_quantity", 200),
    ("post", "/api/v1/allocations", {"orderid": "o2", "sku": "LAMP", "qty": 1}, "allocate", 201),
    ("delete", "/api/v1/orders/o1/allocations/LAMP", None, "cancel_allocation", 204),
]


@pytest.fixture
def stock(batch, allocator):
    batch("b1", "LAMP", 10)
    allocator.post("/api/v1/allocations", {"orderid": "o1", "sku": "LAMP", "qty": 1})


@pytest.mark.django_db
def test_migration_0003_gives_the_allocators_group_every_command_permission():
    group = Group.objects.get(name=ALLOCATORS_GROUP)
    granted = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
    assert granted == set(COMMAND_PERMISSIONS)


@pytest.mark.django_db
@pytest.mark.parametrize("path", READS)
def test_anonymous_reads_are_401(anonymous, path):
    response = anonymous.get(path)
    assert response.status_code == 401
    assert error_code(response) == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path", "body", "_perm", "_ok"), WRITES)
def test_anonymous_writes_are_401(anonymous, stock, method, path, body, _perm, _ok):
    response = getattr(anonymous, method)(path, body)
    assert response.status_code == 401
    assert error_code(response) == "not_authenticated"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", READS)
def test_any_authenticated_user_may_read(reader, stock, path):
    assert reader.get(path).status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path", "body", "_perm", "_ok"), WRITES)
def test_a_user_without_the_command_permission_gets_403(
    reader, stock, method, path, body, _perm, _ok
):
    events = orm.StoredEvent.objects.count()
    response = getattr(reader, method)(path, body)
    assert response.status_code == 403
    assert error_code(response) == "permission_denied"
    assert orm.StoredEvent.objects.count() == events  # nothing ran


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path", "body", "_perm", "ok"), WRITES)
def test_an_allocator_may_write(allocator, stock, method, path, body, _perm, ok):
    assert getattr(allocator, method)(path, body).status_code == ok


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("method", "path", "body", "perm", "ok"), WRITES)
def test_each_write_needs_exactly_its_own_permission(stock, method, path, body, perm, ok):
    """A user holding every command permission but this one is refused; with it, allowed."""
    user = User.objects.create_user("partial")
    others = Permission.objects.filter(
        content_type__app_label="allocation",
        codename__in=[p.split(".")[1] for p in COMMAND_PERMISSIONS if not p.endswith(perm)],
    )
    user.user_permissions.set(others)
    client = APIClient()
    client.force_authenticate(user)
    assert getattr(client, method)(path, body).status_code == 403

    user.user_permissions.add(Permission.objects.get(codename=perm))
    client.force_authenticate(User.objects.get(pk=user.pk))  # a fresh permission cache
    assert getattr(client, method)(path, body).status_code == ok


@pytest.mark.django_db(transaction=True)
def test_a_drf_token_authenticates(allocators_group):
    user = User.objects.create_user("robot")
    user.groups.add(allocators_group)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert client.post("/api/v1/batches", {"ref": "b1", "sku": "X", "qty": 1}).status_code == 201

    client.credentials(HTTP_AUTHORIZATION="Token wrong")
    response = client.get("/api/v1/stock")
    assert response.status_code == 401
    assert error_code(response) == "authentication_failed"


@pytest.mark.django_db(transaction=True)
def test_a_session_authenticates(allocators_group):
    user = User.objects.create_user("clerk", password="pw-for-tests")
    client = APIClient()
    assert client.login(username="clerk", password="pw-for-tests")
    assert client.get("/api/v1/stock").status_code == 200
    assert client.post("/api/v1/batches", {"ref": "b1", "sku": "X", "qty": 1}).status_code == 403
    user.groups.add(allocators_group)
    assert client.post("/api/v1/batches", {"ref": "b1", "sku": "X", "qty": 1}).status_code == 201
