"""The Redis consumer under hostile input: whatever arrives, it is skipped with a reason.

Hypothesis generates malformed, oversized, wrong-typed, deeply nested and unicode-heavy
`change_batch_quantity` messages. Each one must be refused by `handle_message` with a
"skipped message ..." warning that says why (never an unexpected-error traceback), and must
change nothing. Then a consumer thread on real Redis is fed a hostile batch over pub/sub and
must still process the valid message that follows.
"""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, assume, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from allocation import models as orm
from allocation.consumer import CHANGE_BATCH_QUANTITY, MAX_MESSAGE_BYTES, handle_message
from allocation.domain import commands
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

BATCH = "fuzz-b1"
SKU = "FUZZ-SHELF"
PURCHASED = 10
MAX_QTY = 2**31 - 1  # PostgreSQL integer columns hold quantities
SKIPPED = f"skipped message on {CHANGE_BATCH_QUANTITY}: "
FUZZ_SETTINGS = hypothesis_settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- strategies -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
# References no batch has, or that no column could hold.
hostile_refs = st.one_of(
    st.text(max_size=300).filter(lambda s: s != BATCH),
    st.text(min_size=256, max_size=600),
    st.text(max_size=20).map(lambda s: f"{BATCH}\x00{s}"),  # PostgreSQL refuses NUL in text
    st.sampled_from(["\U0001f69a" * 100, "ﷺ" * 200, "\u202e" + BATCH, BATCH.upper(), " " + BATCH]),
)
wrong_types = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
bad_quantities = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=MAX_QTY + 1, max_value=10**60),
    st.integers(min_value=1, max_value=100).map(str),
    st.integers(min_value=1, max_value=100).map(float),
    wrong_types,
)


@st.composite
def near_valid(draw) -> str:
    """An object with the right keys where at least one field is unusable."""
    body = {
        "batchref": draw(st.one_of(st.just(BATCH), hostile_refs, st.integers(), wrong_types)),
        "qty": draw(st.one_of(st.integers(min_value=1, max_value=PURCHASED * 2), bad_quantities)),
    }
    if draw(st.booleans()):
        body[draw(st.text(max_size=8))] = draw(json_values)  # noise next to the fields
    if draw(st.booleans()):
        del body[draw(st.sampled_from(sorted(body)))]
    return json.dumps(body, ensure_ascii=draw(st.booleans()))


def surrogate_escapes(data: str) -> str:
    """JSON whose string escapes decode to lone UTF-16 surrogates (no valid text holds them)."""
    return json.dumps({"batchref": "REPLACE", "qty": 3}).replace("REPLACE", data)


hostile_messages = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    json_values.map(json.dumps),
    near_valid(),
    st.sampled_from(["\\ud800", "\\udfff" + BATCH, BATCH + "\\udc80"]).map(surrogate_escapes),
    # deep nesting: the JSON parser recurses
    st.integers(min_value=2_000, max_value=30_000).map(lambda n: "[" * n + "]" * n),
    st.integers(min_value=2_000, max_value=10_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    # over the size limit, however well-formed
    st.integers(min_value=MAX_MESSAGE_BYTES, max_value=MAX_MESSAGE_BYTES * 3).map(
        lambda n: json.dumps({"batchref": BATCH, "qty": 3, "pad": "x" * n})
    ),
    st.integers(min_value=MAX_MESSAGE_BYTES // 4, max_value=MAX_MESSAGE_BYTES).map(
        lambda n: json.dumps({"batchref": BATCH, "qty": 3, "pad": "🚚" * n}, ensure_ascii=False)
    ),
)


def would_be_valid(raw: bytes | str) -> bool:
    """A message the consumer ought to apply: kept out of the hostile examples."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return (
        len(raw) <= MAX_MESSAGE_BYTES
        and isinstance(data, dict)
        and data.get("batchref") == BATCH
        and type(data.get("qty")) is int
        and 1 <= data["qty"] <= MAX_QTY
    )


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def shelf(bus):
    bus.handle(commands.CreateBatch(BATCH, SKU, PURCHASED, None))
    bus.handle(commands.Allocate("fuzz-o1", SKU, 4))


@pytest.fixture
def consumer_log(caplog):
    caplog.set_level(logging.DEBUG, logger="allocation")
    caplog.set_level(logging.DEBUG)
    return caplog


def state() -> tuple:
    batch = orm.Batch.objects.get(reference=BATCH)
    return (
        batch.purchased_quantity,
        batch.allocated_quantity,
        orm.Allocation.objects.count(),
        orm.StoredEvent.objects.count(),
    )


def consumer_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "allocation.consumer"]


# --- handle_message under Hypothesis --------------------------------------------------------


@FUZZ_SETTINGS
@given(raw=hostile_messages, as_bytes=st.booleans())
def test_every_hostile_message_is_skipped_with_a_reason_and_changes_nothing(
    bus, shelf, consumer_log, raw, as_bytes
):
    assume(not would_be_valid(raw))
    if as_bytes and isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")  # Redis hands the consumer bytes
    before = state()
    consumer_log.clear()

    handled = handle_message(bus, CHANGE_BATCH_QUANTITY, raw)

    assert handled is False
    records = consumer_records(consumer_log)
    assert [r.levelname for r in records] == ["WARNING"], [r.getMessage()[:300] for r in records]
    message = records[0].getMessage()
    assert message.startswith(SKIPPED), message[:300]
    reason = message[len(SKIPPED) :].split(" (", 1)[0]
    assert reason.strip(), message[:300]  # it says why
    assert len(message) < 2_000  # the log line quotes a bounded prefix, not the whole message
    assert state() == before


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (json.dumps({"batchref": BATCH, "qty": 2**31}), "qty"),
        (json.dumps({"batchref": BATCH, "qty": 10**30}), "qty"),
        (json.dumps({"batchref": BATCH + "\x00", "qty": 3}), "batchref"),
        ('{"batchref": "\\ud800", "qty": 3}', "batchref"),
        ("[" * 30_000 + "]" * 30_000, "not JSON"),
        (json.dumps({"batchref": BATCH, "qty": 3, "pad": "x" * MAX_MESSAGE_BYTES}), "bytes"),
    ],
    ids=["qty-2^31", "qty-10^30", "nul-ref", "surrogate-ref", "deep-nesting", "oversized"],
)
def test_the_reason_names_what_is_wrong(bus, shelf, consumer_log, raw, reason):
    """Found by the fuzzer: these once reached the database and were logged as crashes."""
    before = state()

    assert handle_message(bus, CHANGE_BATCH_QUANTITY, raw) is False

    (record,) = consumer_records(consumer_log)
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith(SKIPPED)
    assert reason in record.getMessage()
    assert state() == before


# --- the consumer thread on real Redis ------------------------------------------------------

HOSTILE_BATCH: list[bytes] = [
    b"",
    b"\x00" * 64,
    b"\xff\xfe\xfd" * 100,
    b"\xed\xa0\x80",  # a UTF-8 encoded surrogate: not valid UTF-8
    "🚚📦".encode() * 1000,
    json.dumps({"batchref": "🚚" * 5000, "qty": 3}, ensure_ascii=False).encode(),
    # "Batch" in mathematical script letters, a combining accent and a zero-width joiner
    json.dumps(
        {"batchref": "\u212c\U0001d4b6\U0001d4c9\U0001d4b8\U0001d4bd\u0301\u200d", "qty": 3},
        ensure_ascii=False,
    ).encode(),
    json.dumps({"batchref": BATCH, "qty": 2**63}).encode(),
    json.dumps({"batchref": BATCH, "qty": -(2**63)}).encode(),
    json.dumps({"batchref": BATCH, "qty": 3.0}).encode(),
    json.dumps({"batchref": BATCH, "qty": [3]}).encode(),
    json.dumps({"batchref": [BATCH], "qty": 3}).encode(),
    json.dumps({"batchref": {"$ne": ""}, "qty": 3}).encode(),
    json.dumps({"batchref": BATCH + "\x00", "qty": 3}).encode(),
    b'{"batchref": "\\ud800", "qty": 3}',
    b'{"batchref": "fuzz-b1", "qty": NaN}',
    b'{"batchref": "fuzz-b1", "qty": Infinity}',
    b'{"batchref": "fuzz-b1", "batchref": 1, "qty": 3}',  # the last duplicate key wins
    b"[" * 30_000 + b"]" * 30_000,  # deep nesting within the size limit
    json.dumps({"batchref": BATCH, "qty": 3, "pad": "x" * (MAX_MESSAGE_BYTES * 4)}).encode(),
    json.dumps([{"batchref": BATCH, "qty": 3}]).encode(),
    b"1e999999",
    b"-" * 70_000,
]


def test_the_consumer_survives_a_hostile_stream_then_applies_a_valid_message(
    bus, shelf, redis_client, consumer_log, running_consumer
):
    before = state()
    for raw in HOSTILE_BATCH:
        assert redis_client.publish(CHANGE_BATCH_QUANTITY, raw) >= 1
    redis_client.publish(CHANGE_BATCH_QUANTITY, json.dumps({"batchref": BATCH, "qty": 7}))

    # The consumer logs "handled" after the command commits: wait for the line, not the row,
    # or the test reads the log between the two.
    def handled() -> list[logging.LogRecord]:
        return [r for r in consumer_records(consumer_log) if r.getMessage().startswith("handled ")]

    assert wait_for(handled), "the valid message after the hostile ones was not applied"
    assert running_consumer.is_alive()
    records = consumer_records(consumer_log)
    skipped = [r for r in records if r.getMessage().startswith(SKIPPED)]
    assert len(skipped) == len(HOSTILE_BATCH), [r.getMessage()[:120] for r in records]
    assert not [r for r in records if r.levelno >= logging.ERROR]
    assert len(handled()) == 1
    # only the valid message changed anything: one BatchQuantityChanged, the line still fits
    purchased, allocated, lines, events = state()
    assert (purchased, allocated, lines) == (7, before[1], before[2])
    assert events == before[3] + 1
    assert orm.StoredEvent.objects.latest("version").type == "BatchQuantityChanged"
