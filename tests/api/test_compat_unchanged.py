"""The book-compatible endpoints keep their contract beside /api/v1."""

import json

import pytest
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def token_client(allocators_group) -> APIClient:
    """A token of a member of "allocators", as the book's client would use."""
    client = APIClient()
    user = User.objects.create_user("book")
    user.groups.add(allocators_group)
    token = Token.objects.create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def test_the_book_flow(token_client):
    added = token_client.post("/add_batch", {"ref": "b1", "sku": "LAMP", "qty": 10, "eta": None})
    assert added.status_code == 201
    allocated = token_client.post("/allocate", {"orderid": "o1", "sku": "LAMP", "qty": 3})
    assert allocated.status_code == 202
    assert allocated.json() == {"batchref": "b1"}
    assert token_client.get("/allocations/o1").json() == [{"sku": "LAMP", "batchref": "b1"}]
    out = token_client.post("/allocate", {"orderid": "o2", "sku": "LAMP", "qty": 30})
    assert (out.status_code, out.json()) == (202, {"batchref": None})


def test_the_book_writes_need_the_permissions_of_their_commands(db):
    """As /api/v1 does: a user who may only read gets a 403 in the book's shape."""
    reader = APIClient()
    reader.credentials(
        HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=User.objects.create_user('r')).key}"
    )
    for path, body in (
        ("/add_batch", {"ref": "b1", "sku": "LAMP", "qty": 10, "eta": None}),
        ("/allocate", {"orderid": "o1", "sku": "LAMP", "qty": 3}),
    ):
        refused = reader.post(path, body)
        assert refused.status_code == 403, path
        assert set(refused.json()) == {"message"}
    assert reader.get("/allocations/o1").status_code == 404  # reading is still allowed


def test_compat_errors_keep_the_message_format(token_client):
    unknown = token_client.post("/allocate", {"orderid": "o1", "sku": "NOPE", "qty": 3})
    assert (unknown.status_code, unknown.json()) == (400, {"message": "Invalid sku NOPE"})
    assert token_client.get("/allocations/nobody").status_code == 404
    bad = token_client.post("/add_batch", {"ref": "b1", "sku": "LAMP", "qty": "3"})
    assert bad.status_code == 400
    assert set(bad.json()) == {"message"}
    assert APIClient().post("/allocate", {}).status_code == 401


def test_compat_oversized_bodies_are_a_413_message(token_client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = json.dumps({"orderid": "x" * 2000, "sku": "LAMP", "qty": 1})
    response = token_client.generic("POST", "/allocate", body, content_type="application/json")
    assert response.status_code == 413
    assert set(response.json()) == {"message"}
