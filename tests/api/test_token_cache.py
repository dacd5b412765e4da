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
