"""Fuzzing the API: schemathesis against the OpenAPI schema, Hypothesis against the book's API.

Schemathesis loads the schema from `/api/schema/` of the WSGI application in this process and
sends generated requests (valid and invalid) to every documented operation, authenticated as
a member of "allocators". Every response must be a non-5xx that the schema documents (status,
content type, body). The book-compatible endpoints are not in the schema; Hypothesis throws
arbitrary JSON, strings, numbers and unicode at them: never a 5xx, always `{"message"}` errors.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import schemathesis
from django.contrib.auth.models import User
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis import checks as st_checks

from allocation import models as orm
from allocation.apps import get_bus
from allocation.domain import commands
from tests.api.conftest import error_code

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES_PER_OPERATION = 25
FUZZ = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
]


@pytest.fixture
def allocator_token(allocators_group, settings) -> str:
    # The throttle would answer 429 (documented) and hide what the fuzzer is looking for.
    settings.ALLOCATION_WRITE_THROTTLE_RATE = "off"
    user = User.objects.create_user("fuzz-allocator")
    user.groups.add(allocators_group)
    return Token.objects.create(user=user).key


@pytest.fixture
def stock(allocator_token):
    """Something for generated references to hit: batches, allocations, events, deliveries."""
    bus = get_bus()
    bus.handle(commands.CreateBatch("b1", "LAMP", 10, None))
    bus.handle(commands.CreateBatch("b2", "LAMP", 5, "2031-01-01"))
    bus.handle(commands.Allocate("o1", "LAMP", 3))


# The schema documents this list as paginated (`{"count", "results", ...}` with `page` and
# `page_size`), while the view answers a plain list, as docs/api.md says: the view inherits
# ReadApi's pagination_class without using it (readmodels/api.py, OrderAllocationListApi).
UNPAGINATED_LIST_DOCUMENTED_AS_PAGE = "order_allocation_list"


@schema.exclude(operation_id=UNPAGINATED_LIST_DOCUMENTED_AS_PAGE).parametrize()
@FUZZ
def test_the_documented_api_under_generated_requests(case, allocator_token, stock):
    case.call_and_validate(headers={"Authorization": f"Token {allocator_token}"}, checks=CHECKS)


@schema.include(operation_id=UNPAGINATED_LIST_DOCUMENTED_AS_PAGE).parametrize()
@FUZZ
def test_an_orders_allocations_match_their_schema(case, allocator_token, stock):
    case.call_and_validate(headers={"Authorization": f"Token {allocator_token}"}, checks=CHECKS)


# Generated requests rarely hit an existing sku or batch, so the success responses are checked
# against the schema here too, with requests that succeed (in this order: they share a database).
SUCCESSES = [
    ("POST", "/api/v1/batches", {"body": {"ref": "b3", "sku": "LAMP", "qty": 4, "eta": None}}, 201),
    ("POST", "/api/v1/batches", {"body": {"ref": "b4", "sku": "DESK", "qty": 2}}, 201),
    ("POST", "/api/v1/allocations", {"body": {"orderid": "o2", "sku": "LAMP", "qty": 2}}, 201),
    ("PATCH", "/api/v1/batches/{ref}", {"path_parameters": {"ref": "b1"}, "body": {"qty": 4}}, 200),
    ("GET", "/api/v1/batches/{ref}", {"path_parameters": {"ref": "b1"}}, 200),
    ("GET", "/api/v1/batches", {"query": {"sku": "LAMP", "page_size": 1}}, 200),
    ("GET", "/api/v1/stock", {}, 200),
    ("GET", "/api/v1/stock/{sku}", {"path_parameters": {"sku": "LAMP"}}, 200),
    ("GET", "/api/v1/events", {"query": {"sku": "LAMP", "page_size": 2}}, 200),
    ("GET", "/api/v1/deliveries", {"query": {"status": "done"}}, 200),
    (
        "DELETE",
        "/api/v1/orders/{orderid}/allocations/{sku}",
        {"path_parameters": {"orderid": "o1", "sku": "LAMP"}},
        204,
    ),
    ("GET", "/health/", {}, 200),
]


def test_successful_answers_match_the_schema(allocator_token, stock):
    headers = {"Authorization": f"Token {allocator_token}", "Prefer": "wait=1"}
    for method, path, request, status in SUCCESSES:
        case = schema[path][method].Case(**request)
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        assert response.status_code == status, (method, path, response.text[:300])


# --- the book-compatible endpoints: not in the schema ------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["LAMP", "b1", "o1", "2031-01-01", "2031-02-30", "\x00", "🚚" * 50])
)
junk = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
references = st.one_of(
    st.sampled_from(["LAMP", "b1", "o1"]),
    st.text(max_size=20),
    st.text(min_size=250, max_size=300),
    st.text(max_size=10).map(lambda s: s + "\x00"),
    junk,
)
quantities = st.one_of(
    st.integers(min_value=-5, max_value=20),
    st.integers(min_value=2**31 - 2, max_value=2**31 + 2),
    st.integers(min_value=10**18, max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    junk,
)
etas = st.one_of(st.none(), st.dates().map(str), st.text(max_size=12), junk)


def bodies(**fields) -> st.SearchStrategy:
    """An object with some of `fields` (each from its strategy) and maybe some junk keys."""
    return st.fixed_dictionaries({}, optional=fields) | junk


compat_requests = st.one_of(
    st.tuples(
        st.just("/add_batch"), bodies(ref=references, sku=references, qty=quantities, eta=etas)
    ),
    st.tuples(st.just("/allocate"), bodies(orderid=references, sku=references, qty=quantities)),
)


@pytest.fixture
def token_client(allocator_token) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {allocator_token}")
    return client


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=compat_requests)
def test_the_compat_writes_never_answer_5xx(token_client, stock, request):
    path, body = request
    response = token_client.generic("POST", path, json.dumps(body), content_type="application/json")

    assert response.status_code < 500, (path, body, response.content[:500])
    if response.status_code >= 400:
        assert set(response.json()) == {"message"}, response.content[:500]
        assert response.json()["message"]
    # whatever was accepted, no batch is over-allocated
    for batch in orm.Batch.objects.all():
        assert 0 <= batch.allocated_quantity <= batch.purchased_quantity


@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        junk.map(lambda value: json.dumps(value).encode()),
        st.integers(min_value=1_000, max_value=20_000).map(lambda n: b"[" * n + b"]" * n),
    ),
    target=st.sampled_from(
        [
            ("POST", "/add_batch"),
            ("POST", "/allocate"),
            ("POST", "/api/v1/batches"),
            ("PATCH", "/api/v1/batches/b1"),
            ("POST", "/api/v1/allocations"),
        ]
    ),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "application/json; charset=latin-1", ""]
    ),
)
def test_every_write_survives_raw_bytes(token_client, stock, raw, target, content_type):
    method, path = target
    response = token_client.generic(method, path, raw, content_type=content_type)

    assert response.status_code < 500, (path, raw[:200], response.content[:500])
    assert response.status_code < 300 or response.status_code in (400, 404, 409, 413, 415)
    if response.status_code >= 400 and path.startswith("/api/v1/"):
        error_code(response)  # the v1 envelope
    elif response.status_code >= 400:
        assert set(response.json()) == {"message"}, response.content[:500]


@pytest.mark.parametrize("path", ["/add_batch", "/allocate", "/api/v1/batches"])
def test_json_nested_deeper_than_the_parser_recurses_is_malformed_not_a_500(token_client, path):
    """Found by the fuzzer: json.load raises RecursionError, which DRF's parser let through."""
    response = token_client.generic(
        "POST", path, "[" * 20_000 + "]" * 20_000, content_type="application/json"
    )

    assert response.status_code == 400
    if path.startswith("/api/v1/"):
        assert error_code(response) == "malformed_json"
    else:
        assert "JSON parse error" in response.json()["message"]


def test_an_order_id_with_a_nul_is_not_found_by_the_compat_read(token_client, stock):
    """Found by the fuzzer: PostgreSQL refuses NUL in text, which made this a 500."""
    response = token_client.get("/allocations/o1%00")
    assert response.status_code == 404
    assert response.json() == {"message": "not found"}


@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(orderid=st.text(min_size=1, max_size=300) | st.sampled_from(["o1", "o1\x00", "%00"]))
def test_the_compat_read_never_answers_5xx(token_client, stock, orderid):
    response = token_client.get(f"/allocations/{quote(orderid, safe='')}")

    assert response.status_code in (200, 404), (orderid, response.content[:500])
    if response.status_code == 200:
        assert all(set(line) == {"sku", "batchref"} for line in response.json())
