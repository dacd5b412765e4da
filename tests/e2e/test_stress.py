"""Stress: 32 concurrent HTTP clients against gunicorn, a Celery worker and beat, on PostgreSQL.

A stack of this module's own (database allocation_e2e_stress, a private redis-server). For
about 20 seconds, 32 client threads send a random mix of v1 writes and reads over 3 skus, as a
member of "allocators": allocate, cancel (any client's lines), change a batch's quantity up and
down (lines move, or end out of stock), add batches, read stock and orders. Every request
carries its own X-Correlation-ID, and every response is recorded. Once the clients stop and
no delivery is pending, what the clients were told, the write side, the event log and the
read models must all agree:

- no 5xx and no dropped connection, whatever the contention;
- no batch over-allocated; each batch's counter equals the sum of its lines;
- no order line allocated twice: one row per (orderid, sku); in the event log each line
  alternates Allocated, then Deallocated or AllocationCancelled, then Allocated ..., and a
  reallocation directly follows the Deallocated it answers; an order lists a sku once;
- every acknowledged write left its events under its correlation id, and every 201 allocation
  is still in the write model unless a later event (higher version) took it off;
- per sku, the event versions run 1..N with no gap, N being the product's version;
- no delivery left pending or dead, and `manage.py check_readmodels` finds no drift.

Clients never allocate a line that already exists, so that every Allocated after a Deallocated
is its reallocation; the last two tests play the race of a client that does, deterministically.

The status histogram and a summary are printed and written to tests/artifacts/e2e-stress/.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import pytest

from tests.e2e.harness import (
    ARTIFACTS_ROOT,
    PrivateRedis,
    Stack,
    StackConfig,
    running_stack,
    wait_until,
)

pytestmark = pytest.mark.e2e

DATABASE = "allocation_e2e_stress"
ARTIFACTS_SUBFOLDER = "e2e-stress"
CLIENTS = 32
DURATION = 20.0
MIN_CALLS = 12  # per client
DRAIN_TIMEOUT = 120.0
SEED = 20_261_126
SKUS = ("STRESS-LAMP", "STRESS-DESK", "STRESS-RUG")
STRESS_ENV = {
    "ALLOCATION_WRITE_THROTTLE_RATE": "off",
    # Lost or slow dispatches are swept again soon, so that the backlog drains in bounded time.
    "ALLOCATION_SWEEP_INTERVAL": "1",
    "ALLOCATION_DELIVERY_LEASE": "10",
    "ALLOCATION_DELIVERY_BACKOFF_BASE": "0.2",
    "ALLOCATION_DELIVERY_BACKOFF_MAX": "2",
    "EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",  # many out-of-stock mails
}
# op -> weight
MIX = {
    "allocate": 45,
    "cancel": 15,
    "change_quantity": 15,
    "add_batch": 10,
    "read_stock": 8,
    "read_order": 7,
}
REMOVALS = ("Deallocated", "AllocationCancelled")
REALLOCATE = "allocation.reallocate"


@dataclass
class Call:
    """One request a client sent and what it was told."""

    op: str
    method: str
    path: str
    body: dict[str, Any] | None
    correlation_id: str
    status: int = 0  # 0: no HTTP answer (error says why)
    answer: Any = None
    error: str = ""
    seconds: float = 0.0

    @property
    def code(self) -> str | None:
        if isinstance(self.answer, dict) and isinstance(self.answer.get("error"), dict):
            return self.answer["error"].get("code")
        return None


@dataclass
class Shared:
    """What the clients know about the world, to pick targets: batches and allocated lines."""

    batches: list[str] = field(default_factory=list)
    lines: list[tuple[str, str, int]] = field(default_factory=list)  # (orderid, sku, qty)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Outcome:
    calls: list[Call]
    events: list[dict[str, Any]]
    batches: list[tuple[str, str, int, int]]  # reference, sku, purchased, allocated
    rows: list[tuple[str, str, int, str]]  # orderid, sku, qty, batch reference
    line_sums: dict[str, int]
    versions: dict[str, int]  # sku -> product version
    deliveries: dict[str, int]  # status -> count
    check_readmodels: tuple[int, str]
    drained_in: float


# --- the client -----------------------------------------------------------------------------


class Client:
    def __init__(self, number: int, port: int, token: str, shared: Shared, deadline: float):
        self.number, self.port, self.token = number, port, token
        self.shared, self.deadline = shared, deadline
        self.rng = random.Random(SEED + number)
        self.calls: list[Call] = []
        self.mine: list[tuple[str, str, int]] = []  # lines this client allocated
        self.counter = 0

    def send(self, op: str, method: str, path: str, body: dict | None = None) -> Call:
        call = Call(op, method, path, body, uuid.uuid4().hex)
        headers = {
            "Accept": "application/json",
            "Authorization": f"Token {self.token}",
            "X-Correlation-ID": call.correlation_id,
        }
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        started = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            text = response.read().decode(errors="replace")
            call.status = response.status
            try:
                call.answer = json.loads(text) if text else None
            except ValueError:
                call.answer = text[:500]
        except (OSError, http.client.HTTPException) as exc:
            call.error = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
            call.seconds = time.monotonic() - started
        self.calls.append(call)
        return call

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.number}-{self.counter}"

    def run(self) -> None:
        """Until the deadline, and at least MIN_CALLS calls however slow the machine is (the
        contention the tests look for needs that many), within a hard limit."""
        ops, weights = list(MIX), list(MIX.values())
        limit = self.deadline + DURATION * 5
        while (time.monotonic() < self.deadline or len(self.calls) < MIN_CALLS) and (
            time.monotonic() < limit
        ):
            getattr(self, self.rng.choices(ops, weights)[0])()

    # the operations

    def allocate(self) -> None:
        line = (self.name("o"), self.rng.choice(SKUS), self.rng.randint(1, 8))
        call = self.send("allocate", "POST", "/api/v1/allocations", self.line_body(line))
        if call.status == 201:
            self.mine.append(line)
            with self.shared.lock:
                self.shared.lines.append(line)

    def cancel(self) -> None:
        with self.shared.lock:  # any client's line: cancels race each other and reallocations
            if not self.shared.lines:
                return
            orderid, sku, _qty = self.rng.choice(self.shared.lines)
        self.send("cancel", "DELETE", f"/api/v1/orders/{orderid}/allocations/{sku}")

    def change_quantity(self) -> None:
        with self.shared.lock:
            ref = self.rng.choice(self.shared.batches)
        qty = self.rng.randint(1, 30)  # below what is allocated, often: lines move
        self.send("change_quantity", "PATCH", f"/api/v1/batches/{ref}", {"qty": qty})

    def add_batch(self) -> None:
        ref = self.name("batch")
        eta = self.rng.choice([None, str(date.today() + timedelta(days=self.rng.randint(1, 30)))])
        body = {"ref": ref, "sku": self.rng.choice(SKUS), "qty": self.rng.randint(1, 12)}
        call = self.send("add_batch", "POST", "/api/v1/batches", {**body, "eta": eta})
        if call.status == 201:
            with self.shared.lock:
                self.shared.batches.append(ref)

    def read_stock(self) -> None:
        self.send("read_stock", "GET", f"/api/v1/stock/{self.rng.choice(SKUS)}")

    def read_order(self) -> None:
        if self.mine:
            orderid = self.rng.choice(self.mine)[0]
            self.send("read_order", "GET", f"/api/v1/orders/{orderid}/allocations")

    @staticmethod
    def line_body(line: tuple[str, str, int]) -> dict[str, Any]:
        orderid, sku, qty = line
        return {"orderid": orderid, "sku": sku, "qty": qty}


# --- the run --------------------------------------------------------------------------------


def seed(stack: Stack, shared: Shared) -> None:
    seeder = Client(-1, stack.port, stack.api.token, shared, deadline=0)
    for n, sku in enumerate(SKUS):
        for ref, qty, eta in ((f"w{n}", 20, None), (f"s{n}", 10, str(date.today()))):
            call = seeder.send(
                "seed", "POST", "/api/v1/batches", {"ref": ref, "sku": sku, "qty": qty, "eta": eta}
            )
            assert call.status == 201, call
            shared.batches.append(ref)


def query(stack: Stack, sql: str, *params: Any) -> list[tuple]:
    with stack.connect() as conn:
        return conn.execute(sql, params).fetchall()


def pending(stack: Stack) -> int:
    return query(stack, "SELECT count(*) FROM allocation_delivery WHERE status = 'pending'")[0][0]


def summary(calls: list[Call], drained_in: float) -> str:
    statuses = Counter((c.op, c.status, c.code) for c in calls)
    lines = [
        f"{len(calls)} requests from {CLIENTS} clients in {DURATION:.0f}s "
        f"({len(calls) / DURATION:.0f}/s); deliveries drained {drained_in:.1f}s after",
        "status histogram (op, status, code): count",
    ]
    lines += [
        f"  {op:16} {status} {code or '':22} {n}"
        for (op, status, code), n in sorted(
            statuses.items(), key=lambda item: (item[0][0], item[0][1])
        )
    ]
    overall = Counter(c.status for c in calls)
    lines.append("overall: " + ", ".join(f"{s}: {n}" for s, n in sorted(overall.items())))
    slowest = sorted(calls, key=lambda c: c.seconds)[-1]
    lines.append(f"slowest: {slowest.seconds:.2f}s {slowest.method} {slowest.path}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    broker = PrivateRedis(log_dir=ARTIFACTS_ROOT / ARTIFACTS_SUBFOLDER)
    config = StackConfig(
        database=DATABASE,
        redis_url=broker.url,
        env=STRESS_ENV,
        processes=("web", "worker", "beat"),
        worker_concurrency=2,
        web_workers=3,
        artifacts=ARTIFACTS_SUBFOLDER,
    )
    try:
        broker.start()
        with running_stack(config) as running:
            yield running
    finally:
        broker.close()


@pytest.fixture(scope="module")
def outcome(stack: Stack) -> Outcome:
    """The stress run, once for the module; each test checks one thing about it."""
    return run(stack, ARTIFACTS_ROOT / ARTIFACTS_SUBFOLDER)


def run(stack: Stack, log_dir) -> Outcome:
    shared = Shared()
    seed(stack, shared)
    deadline = time.monotonic() + DURATION
    clients = [Client(n, stack.port, stack.api.token, shared, deadline) for n in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, name=f"client-{c.number}") for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DURATION * 6 + 60)
    assert not any(t.is_alive() for t in threads), "a client is stuck"
    stopped = time.monotonic()
    wait_until(lambda: pending(stack) == 0, DRAIN_TIMEOUT, "no pending delivery", pause=0.5)
    drained_in = time.monotonic() - stopped

    calls = [call for client in clients for call in client.calls]
    report = summary(calls, drained_in)
    print(report)
    (log_dir / "summary.txt").write_text(report + "\n")

    check = stack.manage("check-readmodels", "check_readmodels", check=False)
    columns = ("id", "type", "sku", "version", "payload", "correlation_id", "causation_id")
    events = [
        dict(zip(columns, row, strict=True))
        for row in query(stack, f"SELECT {', '.join(columns)} FROM allocation_storedevent")
    ]
    for event in events:
        event["id"] = str(event["id"])
    return Outcome(
        calls=calls,
        events=events,
        batches=query(
            stack,
            "SELECT reference, sku, purchased_quantity, allocated_quantity FROM allocation_batch",
        ),
        rows=query(
            stack,
            "SELECT a.orderid, a.sku, a.qty, b.reference FROM allocation_allocation a"
            " JOIN allocation_batch b ON b.id = a.batch_id",
        ),
        line_sums=dict(
            query(
                stack,
                "SELECT b.reference, COALESCE(SUM(a.qty), 0) FROM allocation_batch b"
                " LEFT JOIN allocation_allocation a ON a.batch_id = b.id GROUP BY b.reference",
            )
        ),
        versions=dict(query(stack, "SELECT sku, version_number FROM allocation_product")),
        deliveries=dict(
            query(stack, "SELECT status, count(*) FROM allocation_delivery GROUP BY status")
        ),
        check_readmodels=(check.popen.returncode, check.log("stdout") + check.log("stderr")),
        drained_in=drained_in,
    )


# --- what must hold -------------------------------------------------------------------------


def line_events(outcome: Outcome) -> dict[tuple[str, str], list[dict]]:
    """The Allocated, Deallocated and AllocationCancelled events of each line, by version."""
    lines = defaultdict(list)
    for event in outcome.events:
        if event["type"] in ("Allocated", *REMOVALS):
            lines[event["payload"]["orderid"], event["sku"]].append(event)
    for events in lines.values():
        events.sort(key=lambda e: e["version"])
    return lines


def test_the_load_was_real_and_no_answer_was_a_5xx(outcome):
    report = summary(outcome.calls, outcome.drained_in)
    failed = [c for c in outcome.calls if c.status >= 500 or c.error]
    assert not failed, f"{len(failed)} failed, first: {failed[:5]}\n{report}"
    ops = Counter(c.op for c in outcome.calls if 200 <= c.status < 300)
    # every kind of operation happened, and contention produced refusals and moved lines
    assert set(ops) == set(MIX), report
    assert len(outcome.calls) >= MIN_CALLS * CLIENTS, report
    codes = Counter(c.code for c in outcome.calls)
    assert codes["out_of_stock"] and codes["not_allocated"], report
    types = Counter(e["type"] for e in outcome.events)
    assert types["Deallocated"] and types["OutOfStock"] > codes["out_of_stock"], types
    # quantities went both up and down
    quantity, moves = {}, Counter()
    for event in sorted(outcome.events, key=lambda e: (e["sku"], e["version"])):
        if event["type"] in ("BatchCreated", "BatchQuantityChanged"):
            ref, qty = event["payload"]["ref"], event["payload"]["qty"]
            if ref in quantity and qty != quantity[ref]:
                moves["up" if qty > quantity[ref] else "down"] += 1
            quantity[ref] = qty
    assert moves["up"] and moves["down"], moves


def test_every_answer_is_an_expected_one(outcome):
    allowed = {
        "allocate": {(201, None), (409, "out_of_stock")},
        # 404: cancelled by another client, or taken off a shrunk batch and not placed again
        "cancel": {(204, None), (404, "not_allocated")},
        "change_quantity": {(200, None)},
        "add_batch": {(201, None)},
        "read_stock": {(200, None)},
        "read_order": {(200, None)},
    }
    unexpected = [c for c in outcome.calls if (c.status, c.code) not in allowed[c.op]]
    assert not unexpected, unexpected[:10]


def test_no_batch_is_over_allocated_and_counters_match_their_lines(outcome):
    assert len(outcome.batches) > len(SKUS) * 2
    for reference, _sku, purchased, allocated in outcome.batches:
        assert 0 <= allocated <= purchased, reference
        assert allocated == outcome.line_sums[reference], reference


def test_no_order_line_is_allocated_twice(outcome):
    rows = Counter((orderid, sku) for orderid, sku, _qty, _batch in outcome.rows)
    assert rows and max(rows.values()) == 1
    for line, events in line_events(outcome).items():
        kinds = ["+" if e["type"] == "Allocated" else "-" for e in events]
        assert kinds == ["+", "-"] * (len(kinds) // 2) + ["+"] * (len(kinds) % 2), (line, events)
        # a reallocation places the line that its Deallocated took off, nothing since
        for before, after in itertools.pairwise(events):
            if after["type"] == "Allocated" and before["type"] == "Deallocated":
                assert after["causation_id"] == before["id"], (line, events)
        caused = {e["causation_id"] for e in events}
        for event in events:
            if event["type"] == "Deallocated":
                assert event is events[-1] or event["id"] in caused, (line, events)
    # an order's allocations, as clients read them, list each sku once
    for call in outcome.calls:
        if call.op == "read_order" and call.status == 200:
            skus = Counter(line["sku"] for line in call.answer)
            assert not skus or max(skus.values()) == 1, call
    # and what each client was told is what happened: every 201 names a batch the event log
    # shows the line allocated to, with the quantity asked for
    placed = {
        (line, e["payload"]["batchref"], e["payload"]["qty"])
        for line, events in line_events(outcome).items()
        for e in events
        if e["type"] == "Allocated"
    }
    for call in outcome.calls:
        if call.op == "allocate" and call.status == 201:
            line = (call.body["orderid"], call.body["sku"])
            assert call.answer == {**call.body, "batchref": call.answer["batchref"]}
            assert (line, call.answer["batchref"], call.body["qty"]) in placed, call


def test_every_acknowledged_write_left_its_events(outcome):
    by_chain = defaultdict(list)
    for event in outcome.events:
        by_chain[event["correlation_id"]].append(event)
    for call in outcome.calls:
        chain = by_chain.get(call.correlation_id, [])
        types = Counter(e["type"] for e in chain)
        if call.op == "allocate" and call.status == 201:
            assert types == {"Allocated": 1}, call
            (allocated,) = chain
            assert allocated["payload"]["batchref"] == call.answer["batchref"], call
        elif call.status == 409 and call.code == "out_of_stock":
            assert types == {"OutOfStock": 1}, call
        elif call.op == "cancel" and call.status == 204:
            assert types == {"AllocationCancelled": 1}, call
        elif call.op == "change_quantity":
            changed = [e for e in chain if e["type"] == "BatchQuantityChanged"]
            assert [e["payload"]["qty"] for e in changed] == [call.body["qty"]], call
            # its follow-ups: each line taken off is placed again or ends out of stock
            assert types["Allocated"] + types["OutOfStock"] == types["Deallocated"], call
        elif call.op == "add_batch":
            assert types == {"BatchCreated": 1}, call
        else:
            assert not chain, call  # refusals and reads record nothing


def test_every_201_allocation_is_allocated_unless_a_later_event_removed_it(outcome):
    events_of = line_events(outcome)
    rows = {(orderid, sku): (qty, batch) for orderid, sku, qty, batch in outcome.rows}
    acknowledged = {
        (c.body["orderid"], c.body["sku"])
        for c in outcome.calls
        if c.op == "allocate" and c.status == 201
    }
    assert acknowledged
    for line in acknowledged:
        events = events_of[line]
        last = events[-1]
        if line in rows:
            assert last["type"] == "Allocated", (line, events)
            assert rows[line] == (last["payload"]["qty"], last["payload"]["batchref"])
        else:
            assert last["type"] in REMOVALS, (line, events)
            latest_placement = max(e["version"] for e in events if e["type"] == "Allocated")
            assert last["version"] > latest_placement
    # and nothing is allocated that no client was told about
    assert set(rows) <= acknowledged


def test_event_versions_run_without_gaps_per_sku(outcome):
    versions = defaultdict(set)
    for event in outcome.events:
        versions[event["sku"]].add(event["version"])
    assert set(versions) == set(SKUS)
    for sku, seen in versions.items():
        top = outcome.versions[sku]
        missing = set(range(1, top + 1)) - seen
        assert not missing, f"{sku}: versions {sorted(missing)[:20]} missing of 1..{top}"
        assert max(seen) == top, sku


def test_the_read_models_match_the_write_side(outcome):
    returncode, output = outcome.check_readmodels
    assert returncode == 0, output
    assert "Read models match the write side." in output


def test_every_delivery_is_done(outcome):
    assert set(outcome.deliveries) == {"done"}, outcome.deliveries


# --- a race, deterministically ------------------------------------------------------------------
#
# A Deallocated event's reallocation runs in the worker, some time after the change that took
# the line off. If the line's client allocates it again meanwhile (with another quantity), or
# allocates and cancels it, the reallocation must leave the line as its client left it: the
# reallocation carries the version of its Deallocated, and a line changed since is left alone.


@dataclass
class Race:
    conflict: tuple[str, int, str]  # the reallocation's delivery: status, attempts, last error
    cancelled_line: Any  # GET /api/v1/orders/race-o2/allocations once its reallocation ran


@pytest.fixture(scope="module")
def race(stack: Stack, outcome: Outcome) -> Race:
    """Both races at once, while the worker is stopped (after the stress run, on its stack)."""
    client = Client(CLIENTS, stack.port, stack.api.token, Shared(), deadline=0)

    def ok(status: int, method: str, path: str, body: dict | None = None) -> None:
        call = client.send("race", method, path, body)
        assert call.status == status, call

    for n in (1, 2):
        ok(201, "POST", "/api/v1/batches", {"ref": f"race-b{n}", "sku": f"RACE-{n}", "qty": 5})
        ok(
            201,
            "POST",
            "/api/v1/allocations",
            {"orderid": f"race-o{n}", "sku": f"RACE-{n}", "qty": 3},
        )
    stack.stop("worker")
    try:
        for n in (1, 2):  # the lines no longer fit: Deallocated; reallocations wait
            ok(200, "PATCH", f"/api/v1/batches/race-b{n}", {"qty": 2})
        # race-o1 is placed again with another quantity
        ok(201, "POST", "/api/v1/allocations", {"orderid": "race-o1", "sku": "RACE-1", "qty": 2})
        # race-o2 is placed again (on a new batch: it no longer fits its own), then cancelled
        ok(201, "POST", "/api/v1/batches", {"ref": "race-b2-more", "sku": "RACE-2", "qty": 5})
        ok(201, "POST", "/api/v1/allocations", {"orderid": "race-o2", "sku": "RACE-2", "qty": 3})
        ok(204, "DELETE", "/api/v1/orders/race-o2/allocations/RACE-2")
    finally:
        stack.start("worker")

    def reallocations_ran():
        rows = query(
            stack,
            "SELECT e.payload->>'orderid', d.status, d.attempts, d.last_error"
            " FROM allocation_delivery d JOIN allocation_storedevent e ON e.id = d.event_id"
            " WHERE e.type = 'Deallocated' AND e.sku LIKE 'RACE-%%' AND d.handler = %s",
            REALLOCATE,
        )
        ran = {
            orderid: (status, attempts, (error.strip().splitlines() or [""])[-1])
            for orderid, status, attempts, error in rows
            if status != "pending"  # done, or dead
        }
        return ran if len(ran) == 2 else None

    ran = wait_until(reallocations_ran, 30, "both reallocations to run")
    wait_until(
        lambda: (
            not query(
                stack,
                "SELECT 1 FROM allocation_delivery d JOIN allocation_storedevent e"
                " ON e.id = d.event_id WHERE e.sku = 'RACE-2' AND d.status = 'pending'",
            )
        ),
        30,
        "RACE-2's deliveries to be done",
    )
    lines = client.send("race", "GET", "/api/v1/orders/race-o2/allocations")
    return Race(conflict=ran["race-o1"], cancelled_line=lines.answer)


def test_a_reallocation_overtaken_by_its_client_does_not_fail(race):
    status, attempts, error = race.conflict
    assert status == "done", f"{status} after {attempts} attempt(s): {error}"


def test_a_line_cancelled_after_it_was_taken_off_stays_cancelled(race):
    assert race.cancelled_line == []
