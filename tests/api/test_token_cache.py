"""API tokens are cached between requests, and a revoked token or a deactivated user is refused
at once, in every process: the cache entry goes when the token or its user changes."""

import uuid

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def token(db) -> Token:
    return Token.objects.create(user=User.objects.create_user("clerk"))


def client_with(token: Token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def token_queries(client: APIClient) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        status = client.get("/api/v1/stock").status_code
    return status, sum("authtoken_token" in q["sql"] for q in queries.captured_queries)


def test_a_token_is_read_from_the_database_once_then_from_the_cache(token):
    client = client_with(token)

    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 0)


def test_with_the_cache_off_every_request_reads_the_token(token, settings):
    settings.ALLOCATION_TOKEN_CACHE_SECONDS = 0
    client = client_with(token)

    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 1)


def test_a_deleted_token_is_refused_at_once(token):
    client = client_with(token)
    assert client.get("/api/v1/stock").status_code == 200

    Token.objects.get(key=token.key).delete()

    assert client.get("/api/v1/stock").status_code == 401


def test_a_deactivated_user_is_refused_at_once(token):
    client = client_with(token)
    assert client.get("/api/v1/stock").status_code == 200

    user = User.objects.get(pk=token.user_id)
    user.is_active = False
    user.save()

    assert client.get("/api/v1/stock").status_code == 401


def test_a_deleted_user_is_refused_at_once(token):
    client = client_with(token)
    assert client.get("/api/v1/stock").status_code == 200

    User.objects.get(pk=token.user_id).delete()

    assert client.get("/api/v1/stock").status_code == 401


def test_permissions_are_not_cached_with_the_token(token, allocators_group):
    client = client_with(token)
    body = {"ref": "b1", "sku": "LAMP", "qty": 5}
    assert client.post("/api/v1/batches", body, format="json").status_code == 403

    User.objects.get(pk=token.user_id).groups.add(allocators_group)

    assert client.post("/api/v1/batches", body, format="json").status_code == 201


def test_without_a_cache_tokens_still_authenticate(token, dead_cache):
    client = client_with(token)

    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 1)


def test_on_the_production_cache_redis_a_token_is_cached_and_a_deletion_drops_it(token, settings):
    settings.CACHES = {
        "default": {
            "BACKEND": "config.cache.ReusingRedisCache",
            "LOCATION": settings.REDIS_URL,
            "KEY_PREFIX": f"test-{uuid.uuid4()}",
        }
    }
    client = client_with(token)

    assert token_queries(client) == (200, 1)
    assert token_queries(client) == (200, 0)  # unpickled from Redis

    Token.objects.get(key=token.key).delete()

    assert client.get("/api/v1/stock").status_code == 401


def test_a_login_keeps_the_token_cached(token):
    client = client_with(token)
    assert token_queries(client) == (200, 1)

    User.objects.get(pk=token.user_id).save(update_fields=["last_login"])

    assert token_queries(client) == (200, 0)


def test_no_secret_reaches_redis(token, settings):
    """Whoever can read the cache's Redis finds neither a token nor a password hash there."""
    import redis

    prefix = f"secrets-{uuid.uuid4().hex}"
    settings.CACHES = {
        "default": {
            "BACKEND": "config.cache.ReusingRedisCache",
            "LOCATION": settings.REDIS_URL,
            "KEY_PREFIX": prefix,
        }
    }
    client = client_with(token)
    for _ in range(3):
        assert client.get("/api/v1/stock").status_code == 200
    assert client.get("/api/v1/stock").wsgi_request.user.username == "clerk"  # from the cache

    server = redis.Redis.from_url(settings.REDIS_URL)
    try:
        keys = list(server.scan_iter(f"{prefix}*"))
        values = [server.get(k) or b"" for k in keys]
        if keys:
            server.delete(*keys)
    finally:
        server.close()
    assert keys  # the token was cached
    password = User.objects.get(username="clerk").password
    for key, value in zip(keys, values, strict=True):
        assert token.key.encode() not in key
        assert token.key.encode() not in value
        assert password.encode() not in value


def write_status(token: Token) -> int:
    """A write that needs allocation.create_batch (refused: 403; let in: 201 or a domain 4xx)."""
    body = {"ref": f"b-{uuid.uuid4().hex[:8]}", "sku": "LAMP", "qty": 1}
    return client_with(token).post("/api/v1/batches", body, format="json").status_code


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "withdraw",
    [
        "leave the group",
        "group loses the permission",
        "group deleted",
        "permission removed from the user",
    ],
)
def test_a_withdrawn_permission_is_refused_at_once(token, allocators_group, withdraw):
    from django.contrib.auth.models import Permission

    user = token.user
    create_batch = Permission.objects.get(codename="create_batch")
    if withdraw == "permission removed from the user":
        user.user_permissions.add(create_batch)
    else:
        user.groups.add(allocators_group)
    assert write_status(token) == 201
    assert write_status(token) == 201  # from the cache now: no question to the database

    if withdraw == "leave the group":
        allocators_group.user_set.remove(user)
    elif withdraw == "group loses the permission":
        allocators_group.permissions.remove(create_batch)
    elif withdraw == "group deleted":
        allocators_group.delete()
    else:
        create_batch.user_set.clear()

    assert write_status(token) == 403


def test_permissions_come_from_the_cache_too(token, allocators_group):
    token.user.groups.add(allocators_group)
    client = client_with(token)
    body = lambda: {"ref": f"b-{uuid.uuid4().hex[:8]}", "sku": "LAMP", "qty": 1}  # noqa: E731
    client.post("/api/v1/batches", body(), format="json")

    with CaptureQueriesContext(connection) as queries:
        assert client.post("/api/v1/batches", body(), format="json").status_code == 201
    asked = [q["sql"] for q in queries.captured_queries if "auth_" in q["sql"]]
    assert asked == []  # neither the token, nor the user, nor their permissions
