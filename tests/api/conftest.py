"""Fixtures of the /api/v1 tests: clients for each kind of user, and a clean cache."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Group, Permission, User
from rest_framework.test import APIClient

from allocation.api.v1.permissions import ALLOCATORS_GROUP, COMMAND_PERMISSIONS


@pytest.fixture(autouse=True)
def _own_cache(settings):
    """A cache of this test's own: throttle counters never leak between tests or runs."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": f"api-tests-{uuid.uuid4()}",
        }
    }


@pytest.fixture
def dead_cache(settings):
    """A Redis cache that nobody answers: the cache is down."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
        }
    }


@pytest.fixture
def allocators_group(db) -> Group:
    """The group migration 0003 creates; a transactional test's flush removes it, so make
    sure it is there (tests/api/test_permissions.py checks what the migration itself made)."""
    group, _ = Group.objects.get_or_create(name=ALLOCATORS_GROUP)
    for perm in COMMAND_PERMISSIONS:
        app_label, codename = perm.split(".")
        group.permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return group


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


@pytest.fixture
def reader(db) -> APIClient:
    """An authenticated user with no command permission."""
    client = APIClient()
    client.force_authenticate(User.objects.create_user("reader"))
    return client


@pytest.fixture
def allocator(allocators_group) -> APIClient:
    """A member of the "allocators" group."""
    user = User.objects.create_user("allocator")
    user.groups.add(allocators_group)
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def batch(allocator):
    """Create a batch through the API: batch("b1", "LAMP", 10, eta=None)."""

    def create(ref: str, sku: str, qty: int, eta: str | None = None):
        response = allocator.post(
            "/api/v1/batches", {"ref": ref, "sku": sku, "qty": qty, "eta": eta}
        )
        assert response.status_code == 201, response.content
        return response.json()

    return create


def error_code(response) -> str:
    """The machine-readable code of a v1 error response (and a check of the envelope)."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["message"]
    return body["error"]["code"]
