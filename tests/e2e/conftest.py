"""The end-to-end harness: the real stack as separate processes, on PostgreSQL and Redis.

One stack, shared by the whole tests/e2e package, runs gunicorn, a Celery worker (prefork, on
a Redis broker) and the external event consumer against a fresh `allocation_e2e` database;
the tests drive it over HTTP and Redis as a client would. Every child writes its stdout and
stderr under tests/artifacts/e2e/, and a failing test shows the tail of those logs. Missing
PostgreSQL or Redis fails the run; it never skips.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "e2e"
BIN = Path(sys.executable).parent

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
DB_NAME = "allocation_e2e"
REDIS_DB = 13
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40

# Settings the children must not inherit from whoever runs pytest (tests/settings.py sets some).
INHERITED_PREFIXES = ("DJANGO_", "CELERY_", "ALLOCATION_", "EMAIL_", "DATABASE_URL", "REDIS_URL")

E2E_ENV = {
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "DJANGO_SECRET_KEY": "e2e",
    "DJANGO_DEBUG": "0",
    "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DATABASE_URL": f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{DB_NAME}",
    "REDIS_URL": REDIS_URL,
    # A broker makes tasks go to the worker; eager mode is switched off explicitly as well.
    "CELERY_BROKER_URL": REDIS_URL,
    "CELERY_TASK_ALWAYS_EAGER": "0",
    "PYTHONUNBUFFERED": "1",
}


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}
    env.update(E2E_ENV)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, pause: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail saying `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs_report()}")
        time.sleep(pause)


# --- child processes ----------------------------------------------------------------------------

RUNNING: list[Process] = []  # every child started and not yet stopped, for the log report


@dataclass
class Process:
    """A child process whose stdout and stderr go to files under tests/artifacts/e2e/."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=child_env)
    popen: subprocess.Popen | None = None

    @property
    def stdout_path(self) -> Path:
        return ARTIFACTS / f"{self.name}.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return ARTIFACTS / f"{self.name}.stderr.log"

    def start(self) -> Process:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            # A session of its own, so that stopping it also reaches its worker children.
            self.popen = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=err, start_new_session=True
            )
        RUNNING.append(self)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self, stream: str = "stderr") -> str:
        path = self.stderr_path if stream == "stderr" else self.stdout_path
        try:
            return path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, timeout: float, stream: str = "stderr") -> re.Match:
        """Wait until the log matches `pattern` (failing at once if the process exits)."""

        def found():
            if not self.alive():
                pytest.fail(f"{self.name} exited with {self.popen.returncode}\n{logs_report()}")
            return re.search(pattern, self.log(stream))

        return wait_until(found, timeout, f"{self.name} to log {pattern!r}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the process, give it STOP_TIMEOUT to exit, then kill its whole group."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(STOP_TIMEOUT)
        # Whatever is left in its group: the process itself, or children it left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT)
        if self in RUNNING:
            RUNNING.remove(self)


def tail(text: str, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def logs_report(processes: list[Process] | None = None) -> str:
    parts = []
    for proc in RUNNING if processes is None else processes:
        status = "running" if proc.alive() else f"exited {proc.popen and proc.popen.returncode}"
        for stream in ("stdout", "stderr"):
            parts.append(
                f"----- {proc.name} {stream} ({status}, pid {proc.popen and proc.popen.pid}) "
                f"-----\n{tail(proc.log(stream))}"
            )
    return "\n".join(parts)


def run_once(name: str, *args: str, timeout: float = 60.0) -> str:
    """Run a management command to completion; its stdout, or a failure with its output."""
    proc = Process(name, [str(BIN / "python"), "manage.py", *args]).start()
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.stop()
        pytest.fail(f"manage.py {' '.join(args)} took over {timeout:.0f}s\n{logs_report([proc])}")
    RUNNING.remove(proc)
    if proc.popen.returncode != 0:
        pytest.fail(f"manage.py {' '.join(args)} failed\n{logs_report([proc])}")
    return proc.log("stdout")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and RUNNING:
        report.sections.append(("e2e process logs (tails)", logs_report()))


# --- external services --------------------------------------------------------------------------


def require_postgres() -> None:
    try:
        psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3
        ).close()
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_USER}@{PG_HOST}:{PG_PORT} (the e2e tests need "
            f"it; they do not skip): {exc}",
            pytrace=False,
        )


def require_redis() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_URL} (the e2e tests need it; they do not skip): "
            f"{exc}",
            pytrace=False,
        )
    return client


def recreate_database() -> None:
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DB_NAME}")


# The database and the Redis db are machine-wide: two e2e runs at once would wreck each other.
LOCK_PATH = Path(tempfile.gettempdir()) / f"{DB_NAME}.lock"
LOCK_TIMEOUT = 120.0


@contextlib.contextmanager
def exclusive_use_of_services() -> Iterator[None]:
    """Hold a machine-wide lock for the stack's lifetime; a second run waits for the first."""
    with LOCK_PATH.open("w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pytest.fail(
                        f"another e2e run has held {LOCK_PATH} for over {LOCK_TIMEOUT:.0f}s",
                        pytrace=False,
                    )
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


CREATE_USER = """
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user("e2e", password="e2e-not-used")
print("TOKEN", Token.objects.create(user=user).key)
"""


# --- the HTTP client ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # parsed JSON, or the text when it is not JSON
    headers: dict[str, str]


class Api:
    """A small client of the book-compatible API: JSON in and out, token auth by default."""

    def __init__(self, host: str, port: int, token: str | None):
        self.host, self.port, self.token = host, port, token

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(
        self, method: str, path: str, payload: Any = None, token: str | None = "default"
    ) -> Response:
        token = self.token if token == "default" else token
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        try:
            conn.request(method, path, body=body, headers=headers)
            raw = conn.getresponse()
            text = raw.read().decode(errors="replace")
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = text
            return Response(raw.status, parsed, {k.lower(): v for k, v in raw.getheaders()})
        finally:
            conn.close()

    def add_batch(self, ref: str, sku: str, qty: int, eta: date | None = None, **kw) -> Response:
        payload = {"ref": ref, "sku": sku, "qty": qty, "eta": eta.isoformat() if eta else None}
        return self.request("POST", "/add_batch", payload, **kw)

    def allocate(self, orderid: str, sku: str, qty: int, **kw) -> Response:
        return self.request("POST", "/allocate", {"orderid": orderid, "sku": sku, "qty": qty}, **kw)

    def allocations(self, orderid: str, **kw) -> Response:
        return self.request("GET", f"/allocations/{orderid}", **kw)

    def batchref_of(self, orderid: str) -> str | None:
        """The batch the order's (single) line is on, per the read model; None when none."""
        response = self.allocations(orderid)
        if response.status == 404:
            return None
        assert response.status == 200, response
        assert len(response.body) == 1, response.body
        return response.body[0]["batchref"]


# --- Redis pub/sub ------------------------------------------------------------------------------

LINE_ALLOCATED = "line_allocated"
CHANGE_BATCH_QUANTITY = "change_batch_quantity"


class Subscription:
    """A confirmed subscription to one channel; `wait_for` picks out the messages of a test.

    Pub/sub channels are shared by every database of a Redis server, so other messages (other
    tests, other processes on the same server) may arrive too; they are kept but skipped.
    """

    def __init__(self, client: redis.Redis, channel: str):
        self.channel = channel
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(channel)
        self.received: list[Any] = []
        message = self.pubsub.get_message(timeout=5)
        assert message and message["type"] == "subscribe", f"not subscribed: {message!r}"

    def _drain(self, timeout: float) -> None:
        message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        while message is not None:
            try:
                self.received.append(json.loads(message["data"]))
            except ValueError:
                self.received.append(message["data"])
            message = self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0)

    def matching(self, **fields: Any) -> list[dict[str, Any]]:
        return [
            m
            for m in self.received
            if isinstance(m, dict) and all(m.get(k) == v for k, v in fields.items())
        ]

    def wait_for(self, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """The first message whose fields include `fields`, waiting at most `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.matching(**fields):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(
                    f"no {self.channel} message with {fields} within {timeout:.0f}s; "
                    f"received {self.received[-20:]}\n{logs_report()}"
                )
            self._drain(min(remaining, 0.5))
        return self.matching(**fields)[0]

    def close(self) -> None:
        self.pubsub.close()


def publish(client: redis.Redis, channel: str, message: Any) -> int:
    """Publish a dict/list as JSON, or bytes/str as they are; the number of receivers."""
    data = message if isinstance(message, bytes | str) else json.dumps(message)
    return client.publish(channel, data)


def wait_for_consumer(client: redis.Redis, consumer: Process, timeout: float) -> None:
    """Publish probes until `consumer` logs one: its subscription is live end to end."""
    probe = f"e2e-probe-{uuid.uuid4().hex}"
    deadline = time.monotonic() + timeout

    def probed():
        if time.monotonic() < deadline:
            publish(client, CHANGE_BATCH_QUANTITY, {"batchref": probe, "qty": 1})
        return probe in consumer.log()

    wait_until(probed, timeout, f"{consumer.name} to receive a probe message", pause=0.2)


# --- the stack ----------------------------------------------------------------------------------


@dataclass
class Stack:
    api: Api
    web: Process
    worker: Process
    consumer: Process


def start_stack() -> Iterator[Stack]:
    with exclusive_use_of_services():
        yield from run_stack()


def run_stack() -> Iterator[Stack]:
    require_postgres()
    client = require_redis()
    for old in ARTIFACTS.glob("*.log"):
        old.unlink()
    recreate_database()
    client.flushdb()

    run_once("migrate", "migrate", "--noinput")
    output = run_once("create-user", "shell", "-c", CREATE_USER)
    token = re.search(r"^TOKEN (\w+)$", output, re.M)
    assert token, f"no token in {output!r}"

    port = free_port()
    web = Process(
        "gunicorn",
        [
            str(BIN / "gunicorn"),
            "config.wsgi",
            "-b",
            f"127.0.0.1:{port}",
            "-w",
            "2",
            "--access-logfile",
            "-",
        ],
    )
    worker = Process(
        "celery-worker",
        [
            str(BIN / "celery"),
            "-A",
            "config",
            "worker",
            "-l",
            "info",
            "-c",
            "2",
            "-P",
            "prefork",
            "-n",
            f"e2e-{uuid.uuid4().hex[:8]}@%h",
        ],
    )
    consumer = Process("consumer", [str(BIN / "python"), "manage.py", "consume_external_events"])
    processes = [web, worker, consumer]
    try:
        for proc in processes:
            proc.start()
        api = Api("127.0.0.1", port, token.group(1))

        def web_answers():
            if not web.alive():
                pytest.fail(f"gunicorn exited\n{logs_report()}")
            try:
                return api.allocations(f"e2e-ping-{uuid.uuid4().hex}").status == 404
            except OSError:
                return False

        wait_until(web_answers, STARTUP_TIMEOUT, "gunicorn to answer HTTP")
        worker.wait_for_log(r"\bready\.", STARTUP_TIMEOUT)
        consumer.wait_for_log(r"listening on change_batch_quantity", STARTUP_TIMEOUT)
        wait_for_consumer(client, consumer, STARTUP_TIMEOUT)
        yield Stack(api, web, worker, consumer)
    finally:
        for proc in processes:
            proc.stop()
        client.close()


@pytest.fixture(scope="package")
def stack() -> Iterator[Stack]:
    # Package scope: one stack for all of tests/e2e, stopped after its last test, so that its
    # consumer and worker are not still listening while the other layers run in the session.
    yield from start_stack()


@pytest.fixture
def api(stack: Stack) -> Api:
    return stack.api


@pytest.fixture
def redis_client(stack: Stack) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=10)
    yield client
    client.close()


@pytest.fixture
def line_allocated(redis_client: redis.Redis) -> Iterator[Subscription]:
    """Subscribed to `line_allocated` before the test acts, so no message is missed."""
    subscription = Subscription(redis_client, LINE_ALLOCATED)
    yield subscription
    subscription.close()


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Names no other test uses: the stack and its database are shared by the whole session."""
    run = uuid.uuid4().hex[:10]
    return lambda prefix: f"{prefix}-{run}"
