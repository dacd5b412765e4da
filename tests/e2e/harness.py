"""The end-to-end harness: the real stack as separate processes, on PostgreSQL and Redis.

Importable by the e2e tests (through the fixtures in conftest.py) and by the benchmarks under
bench/ (`from tests.e2e.harness import ...`). A stack runs any of gunicorn, a Celery worker
(prefork), Celery beat (the outbox sweeper) and the external event consumer against a database
of its own, on a Redis server of its choosing (the shared one, or a `PrivateRedis` that a test
may kill and start again). Every child writes its stdout and stderr under
tests/artifacts/<subfolder>/, so that two stacks never overwrite each other's logs, and a
failure shows the tail of every running child's logs. Missing PostgreSQL or Redis fails the
run; it never skips.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import redis

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_ROOT = ROOT / "tests" / "artifacts"
ARTIFACTS = ARTIFACTS_ROOT / "e2e"  # the default subfolder (the shared e2e stack's)
BIN = Path(sys.executable).parent

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"
DB_NAME = "allocation_e2e"
REDIS_DB = 13
# Two checkouts may run their tests at once on one machine: each gives its own namespace (a
# suffix of every stack's database) and, for the shared stack, a Redis of its own.
NAMESPACE = os.environ.get("ALLOCATION_TEST_NAMESPACE", "")
REDIS_URL = os.environ.get("E2E_REDIS_URL", f"redis://127.0.0.1:6379/{REDIS_DB}")

STARTUP_TIMEOUT = 30.0
# How long a test waits for what another process does. Generous: a busy CI machine is slow,
# and a test that passes waits only as long as the work takes.
E2E_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
LOG_TAIL_LINES = 40

# Settings the children must not inherit from whoever runs pytest (tests/settings.py sets some).
INHERITED_PREFIXES = ("DJANGO_", "CELERY_", "ALLOCATION_", "EMAIL_", "DATABASE_URL", "REDIS_URL")

ROLES = ("web", "worker", "beat", "consumer")


class HarnessError(AssertionError):
    """The stack did not do what a test or a benchmark waited for."""


def fail(message: str, pytrace: bool = True) -> NoReturn:
    """Fail the current test (under pytest) or raise HarnessError (in a benchmark script)."""
    if "pytest" in sys.modules:
        import pytest

        pytest.fail(message, pytrace=pytrace)
    raise HarnessError(message)


def database_url(database: str, port: int = PG_PORT) -> str:
    return f"postgres://{PG_USER}@{PG_HOST}:{port}/{database}"


def stack_env(
    database: str = DB_NAME,
    redis_url: str = REDIS_URL,
    overrides: Mapping[str, str] = (),
    pg_port: int = PG_PORT,
) -> dict[str, str]:
    """The environment of a stack's children: this process's, minus the service's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_PREFIXES)}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DJANGO_SECRET_KEY": "e2e",
            "DJANGO_DEBUG": "0",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "DATABASE_URL": database_url(database, pg_port),
            "REDIS_URL": redis_url,
            # A broker makes tasks go to the worker; eager mode is switched off explicitly too.
            "CELERY_BROKER_URL": redis_url,
            "CELERY_TASK_ALWAYS_EAGER": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(dict(overrides))
    return env


def child_env() -> dict[str, str]:
    """The environment of the shared e2e stack's children."""
    return stack_env()


def ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port nothing listens on, picked below the kernel's ephemeral range.

    An outgoing connection never takes such a port as its source port, so a server that a test
    kills can be started again on the same port.
    """
    low, _high = ephemeral_port_range()
    candidates = range(max(1025, low - 12000), max(2025, low - 500))
    for port in random.sample(candidates, 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
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
            fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs_report()}")
        time.sleep(pause)


# --- child processes ----------------------------------------------------------------------------

RUNNING: list[Process] = []  # every child started and not yet stopped, for the log report


@dataclass
class Process:
    """A child process whose stdout and stderr go to files under `log_dir`."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=child_env)
    popen: subprocess.Popen | None = None
    log_dir: Path = ARTIFACTS
    user: str | None = None  # run as this user (a PostgreSQL server will not run as root)

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.stderr.log"

    @property
    def label(self) -> str:
        return self.name if self.log_dir == ARTIFACTS else f"{self.log_dir.name}/{self.name}"

    def start(self) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            # A session of its own, so that stopping it also reaches its worker children.
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,
                user=self.user,
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

    def logs(self) -> str:
        """stderr and stdout together (a Celery worker redirects a task's output to either)."""
        return self.log("stderr") + self.log("stdout")

    def wait_for_log(self, pattern: str, timeout: float, stream: str = "stderr") -> re.Match:
        """Wait until the log matches `pattern` (failing at once if the process exits)."""

        def found():
            if not self.alive():
                fail(f"{self.label} exited with {self.popen.returncode}\n{logs_report()}")
            return re.search(pattern, self.logs() if stream == "both" else self.log(stream))

        return wait_until(found, timeout, f"{self.label} to log {pattern!r}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the process, give it STOP_TIMEOUT to exit, then kill its whole group."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(STOP_TIMEOUT)
        # Whatever is left in its group: the process itself, or children it left behind.
        self.kill_group()

    def kill_group(self) -> None:
        """SIGKILL the process and everything in its process group, at once, and reap it."""
        if self.popen is None:
            return
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
                f"----- {proc.label} {stream} ({status}, pid {proc.popen and proc.popen.pid}) "
                f"-----\n{tail(proc.log(stream))}"
            )
    return "\n".join(parts)


def run_manage(
    name: str,
    *args: str,
    env: dict[str, str] | None = None,
    log_dir: Path = ARTIFACTS,
    timeout: float = 60.0,
    check: bool = True,
) -> Process:
    """Run `manage.py <args>` to completion; the finished Process (its logs, its returncode)."""
    proc = Process(name, [str(BIN / "python"), "manage.py", *args], log_dir=log_dir)
    if env is not None:
        proc.env = env
    proc.start()
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.stop()
        fail(f"manage.py {' '.join(args)} took over {timeout:.0f}s\n{logs_report([proc])}")
    RUNNING.remove(proc)
    if check and proc.popen.returncode != 0:
        fail(f"manage.py {' '.join(args)} failed\n{logs_report([proc])}")
    return proc


def run_once(name: str, *args: str, timeout: float = 60.0, **kw: Any) -> str:
    """Run a management command to completion; its stdout, or a failure with its output."""
    return run_manage(name, *args, timeout=timeout, **kw).log("stdout")


# --- external services --------------------------------------------------------------------------


def require_postgres(port: int = PG_PORT) -> None:
    try:
        psycopg.connect(
            host=PG_HOST, port=port, user=PG_USER, dbname="postgres", connect_timeout=3
        ).close()
    except psycopg.Error as exc:
        fail(
            f"PostgreSQL is not reachable at {PG_USER}@{PG_HOST}:{port} (the e2e tests need "
            f"it; they do not skip): {exc}",
            pytrace=False,
        )


def require_redis(url: str = REDIS_URL) -> redis.Redis:
    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)
    try:
        client.ping()
    except redis.RedisError as exc:
        fail(
            f"Redis is not reachable at {url} (the e2e tests need it; they do not skip): {exc}",
            pytrace=False,
        )
    return client


def recreate_database(name: str = DB_NAME, port: int = PG_PORT) -> None:
    assert re.fullmatch(r"\w+", name), f"not a plain database name: {name!r}"
    with psycopg.connect(
        host=PG_HOST, port=port, user=PG_USER, dbname="postgres", autocommit=True
    ) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")


def connect(database: str = DB_NAME, port: int = PG_PORT) -> psycopg.Connection:
    """An autocommit connection to a stack's database, to check what the stack wrote."""
    return psycopg.connect(host=PG_HOST, port=port, user=PG_USER, dbname=database, autocommit=True)


LOCK_TIMEOUT = 120.0


def lock_path(database: str = DB_NAME) -> Path:
    return Path(tempfile.gettempdir()) / f"{database}.lock"


LOCK_PATH = lock_path()


@contextlib.contextmanager
def exclusive_use_of_services(database: str = DB_NAME) -> Iterator[None]:
    """Hold a machine-wide lock on `database` (and the stack's Redis) for the stack's lifetime.

    The database, and a Redis db on the shared server, are machine-wide: two runs of the same
    stack at once would wreck each other, so a second run waits for the first.
    """
    path = lock_path(database)
    with path.open("w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fail(
                        f"another e2e run has held {path} for over {LOCK_TIMEOUT:.0f}s",
                        pytrace=False,
                    )
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class PrivateRedis:
    """A redis-server of one's own (no persistence), that may be killed and started again."""

    def __init__(self, log_dir: Path = ARTIFACTS, name: str = "private-redis"):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(
            host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=5
        )
        self.log_dir, self.name = log_dir, name
        self.servers: list[Process] = []

    @property
    def server(self) -> Process | None:
        return self.servers[-1] if self.servers else None

    def start(self, timeout: float = 10.0) -> Process:
        """Start a redis-server on this object's port (empty: nothing survives a restart)."""
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        server = Process(f"{self.name}-{len(self.servers)}", argv, log_dir=self.log_dir).start()
        self.servers.append(server)
        wait_until(self.answers, timeout, f"redis-server on port {self.port} to answer")
        return server

    def kill(self) -> None:
        """SIGKILL the running server: no shutdown, no goodbye to its clients."""
        if self.server is not None:
            self.server.stop(signal.SIGKILL)

    def running(self) -> bool:
        return self.server is not None and self.server.alive()

    def answers(self) -> bool:
        try:
            return self.client.ping()
        except redis.ConnectionError:
            return False

    def subscribers(self, channel: str) -> int:
        return dict(self.client.pubsub_numsub(channel))[channel.encode()]

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.client.close()


def postgres_binary(name: str) -> str:
    """A PostgreSQL server program (initdb, postgres): on PATH, or Debian's newest."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3])
    )
    if not candidates:
        fail(f"no {name} on PATH or under /usr/lib/postgresql (install postgresql)", pytrace=False)
    return str(candidates[-1])


class PrivatePostgres:
    """A PostgreSQL cluster of one's own, on a free port, that a test may stop, restart or
    kill without disturbing the shared server.

    `initdb` into a temporary folder (as the `postgres` user when run as root: the server
    refuses root), trust authentication for `postgres`, fsync off (nothing here outlives the
    test; an immediate stop still loses what was not yet written).
    """

    def __init__(
        self,
        log_dir: Path = ARTIFACTS,
        name: str = "private-postgres",
        settings: Mapping[str, str] = (),
    ):
        self.port = free_port()
        self.log_dir, self.name = log_dir, name
        self.settings = {"fsync": "off", "max_connections": "100", **dict(settings)}
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="allocation-pg-"))
        self.data = self.root / "data"
        self.servers: list[Process] = []
        if self.user:
            shutil.chown(self.root, self.user)
        initdb = Process(
            f"{name}-initdb",
            [postgres_binary("initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
            log_dir=log_dir,
            user=self.user,
        ).start()
        RUNNING.remove(initdb)
        if initdb.popen.wait(120) != 0:
            fail(f"initdb failed\n{logs_report([initdb])}", pytrace=False)

    @property
    def server(self) -> Process | None:
        return self.servers[-1] if self.servers else None

    def start(self, timeout: float = 30.0) -> Process:
        argv = [postgres_binary("postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}"]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        server = Process(
            f"{self.name}-{len(self.servers)}",
            argv,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"},
            log_dir=self.log_dir,
            user=self.user,
        ).start()
        self.servers.append(server)
        wait_until(self.answers, timeout, f"PostgreSQL on port {self.port} to answer")
        return server

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (what a restart does: clients are cut off, transactions
        rolled back) or `immediate` (a crash: no checkpoint, unwritten WAL is lost)."""
        if self.server is not None:
            self.server.stop({"fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode])

    def restart(self, down_for: float = 0.0, mode: str = "fast") -> None:
        self.stop(mode)
        time.sleep(down_for)  # the outage itself is what is under test
        self.start()

    def running(self) -> bool:
        return self.server is not None and self.server.alive()

    def answers(self) -> bool:
        try:
            psycopg.connect(
                host=PG_HOST, port=self.port, user=PG_USER, dbname="postgres", connect_timeout=2
            ).close()
            return True
        except psycopg.Error:
            return False

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)


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

    def wait_for(self, timeout: float = E2E_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """The first message whose fields include `fields`, waiting at most `timeout`."""
        deadline = time.monotonic() + timeout
        while not self.matching(**fields):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                fail(
                    f"no {self.channel} message with {fields} within {timeout:.0f}s; "
                    f"received {self.received[-20:]}\n{logs_report()}"
                )
            self._drain(min(remaining, 0.5))
        return self.matching(**fields)[0]

    def collect(self, seconds: float) -> None:
        """Receive whatever arrives during the next `seconds`."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._drain(min(remaining, 0.5))

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

    wait_until(probed, timeout, f"{consumer.label} to receive a probe message", pause=0.2)


# --- the stack ----------------------------------------------------------------------------------

CREATE_USER = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user("e2e", password="e2e-not-used")
user.groups.add(Group.objects.get(name="allocators"))  # every command's permission
print("TOKEN", Token.objects.create(user=user).key)
"""

# The first process of a role keeps this name (and log files); a restarted one gets ".2", ...
PROCESS_NAMES = {
    "web": "gunicorn",
    "worker": "celery-worker",
    "beat": "celery-beat",
    "consumer": "consumer",
}


@dataclass
class StackConfig:
    """What a stack runs, and where: its database, its Redis, its settings and its logs."""

    database: str = DB_NAME
    pg_port: int = PG_PORT  # a PrivatePostgres's port for a stack of its own
    redis_url: str = REDIS_URL  # broker and pub/sub; a PrivateRedis's url for a stack of its own
    env: Mapping[str, str] = field(default_factory=dict)  # settings overrides (ALLOCATION_* ...)
    processes: Sequence[str] = ("web", "worker", "consumer")
    worker_concurrency: int = 2
    web_workers: int = 2
    web_threads: int = 8  # threads per gunicorn worker (config/gunicorn.py); 0: sync workers
    artifacts: str = "e2e"  # the subfolder of tests/artifacts/ that holds the logs
    flush_redis: bool = True  # empty the Redis db before starting
    # Run after migrate, before the processes start: extra tables, fixtures, ...
    after_migrate: Callable[[Stack], None] | None = None

    def __post_init__(self):
        unknown = set(self.processes) - set(ROLES)
        assert not unknown, f"unknown roles {unknown}; a stack runs some of {ROLES}"
        if NAMESPACE and not self.database.endswith(f"_{NAMESPACE}"):
            self.database = f"{self.database}_{NAMESPACE}"


class Stack:
    """A running stack: its processes by role, an API client, and its environment."""

    def __init__(self, config: StackConfig):
        self.config = config
        self.env = stack_env(config.database, config.redis_url, config.env, config.pg_port)
        self.log_dir = ARTIFACTS_ROOT / config.artifacts
        self.port = free_port()
        self.processes: dict[str, Process] = {}
        self.generations: dict[str, int] = {}
        self.api: Api | None = None

    # --- processes by role -----------------------------------------------------------------

    @property
    def web(self) -> Process | None:
        return self.processes.get("web")

    @property
    def worker(self) -> Process | None:
        return self.processes.get("worker")

    @property
    def beat(self) -> Process | None:
        return self.processes.get("beat")

    @property
    def consumer(self) -> Process | None:
        return self.processes.get("consumer")

    def argv(self, role: str) -> list[str]:
        if role == "web":
            return [
                str(BIN / "gunicorn"),
                "-c",
                "config/gunicorn.py",
                "config.wsgi",
                "-b",
                f"127.0.0.1:{self.port}",
                "-w",
                str(self.config.web_workers),
                *(
                    ["--threads", str(self.config.web_threads)]
                    if self.config.web_threads
                    else ["--worker-class", "sync"]
                ),
                "--access-logfile",
                "-",
            ]
        if role == "worker":
            return [
                str(BIN / "celery"),
                "-A",
                "config",
                "worker",
                "-l",
                "info",
                "-c",
                str(self.config.worker_concurrency),
                "-P",
                "prefork",
                "-n",
                f"{self.config.artifacts.replace('/', '-')}-{uuid.uuid4().hex[:8]}@%h",
            ]
        if role == "beat":
            schedule = self.log_dir / "celerybeat-schedule"
            return [str(BIN / "celery"), "-A", "config", "beat", "-l", "info", "-s", str(schedule)]
        if role == "consumer":
            return [str(BIN / "python"), "manage.py", "consume_external_events"]
        raise ValueError(f"unknown role {role!r}")

    def start(self, role: str, wait: bool = True) -> Process:
        """Start a (new) process for `role`; wait until it is ready unless told not to."""
        old = self.processes.get(role)
        if old is not None:
            if old.alive():
                raise RuntimeError(f"{old.label} is still running; stop or kill it first")
            old.kill_group()  # reap it, and whatever it left in its group
        generation = self.generations.get(role, 0) + 1
        self.generations[role] = generation
        name = PROCESS_NAMES[role] + (f".{generation}" if generation > 1 else "")
        proc = Process(name, self.argv(role), env=dict(self.env), log_dir=self.log_dir)
        self.processes[role] = proc.start()
        if wait:
            self.wait_ready(role)
        return proc

    def wait_ready(self, role: str, timeout: float = STARTUP_TIMEOUT) -> None:
        proc = self.processes[role]
        if role == "web":

            def web_answers():
                if not proc.alive():
                    fail(f"{proc.label} exited\n{logs_report()}")
                try:
                    return self.api.allocations(f"e2e-ping-{uuid.uuid4().hex}").status == 404
                except OSError:
                    return False

            wait_until(web_answers, timeout, f"{proc.label} to answer HTTP")
        elif role == "worker":
            proc.wait_for_log(r"\bready\.", timeout)
        elif role == "beat":
            proc.wait_for_log(r"beat: Starting", timeout)
        elif role == "consumer":
            proc.wait_for_log(r"listening on change_batch_quantity", timeout)
            client = self.redis_client()
            try:
                wait_for_consumer(client, proc, timeout)
            finally:
                client.close()

    def stop(self, role: str, sig: int = signal.SIGTERM) -> None:
        if role in self.processes:
            self.processes[role].stop(sig)

    def kill(self, role: str) -> None:
        """SIGKILL the role's whole process group (a prefork worker and its children)."""
        self.processes[role].kill_group()

    def restart(self, role: str) -> Process:
        self.stop(role)
        return self.start(role)

    def ensure_running(self) -> None:
        """Start again, as a new generation, any process of the stack that is not running."""
        for role in self.config.processes:
            proc = self.processes.get(role)
            if proc is None or not proc.alive():
                self.start(role)

    def close(self) -> None:
        for proc in self.processes.values():
            proc.stop()

    # --- clients -----------------------------------------------------------------------------

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.config.redis_url, socket_connect_timeout=3, socket_timeout=10
        )

    def connect(self) -> psycopg.Connection:
        return connect(self.config.database, self.config.pg_port)

    def manage(
        self,
        name: str,
        *args: str,
        env: Mapping[str, str] = (),
        timeout: float = 60.0,
        check: bool = True,
    ) -> Process:
        """Run `manage.py <args>` on this stack's settings (plus `env`); the finished Process."""
        return run_manage(
            name,
            *args,
            env={**self.env, **dict(env)},
            log_dir=self.log_dir,
            timeout=timeout,
            check=check,
        )

    # --- lifecycle ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """A fresh database (migrated, with an API user) and an empty Redis db; no processes."""
        require_postgres(self.config.pg_port)
        client = require_redis(self.config.redis_url)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Old logs go, except those of children already running (a PrivateRedis, say).
        keep = {path for proc in RUNNING for path in (proc.stdout_path, proc.stderr_path)}
        for old in [*self.log_dir.glob("*.log"), *self.log_dir.glob("celerybeat-schedule*")]:
            if old not in keep:
                old.unlink()
        recreate_database(self.config.database, self.config.pg_port)
        if self.config.flush_redis:
            client.flushdb()
        client.close()

        self.manage("migrate", "migrate", "--noinput")
        output = self.manage("create-user", "shell", "-c", CREATE_USER).log("stdout")
        token = re.search(r"^TOKEN (\w+)$", output, re.M)
        assert token, f"no token in {output!r}"
        self.api = Api("127.0.0.1", self.port, token.group(1))
        if self.config.after_migrate is not None:
            self.config.after_migrate(self)

    def start_all(self) -> None:
        """Start every process of the stack, then wait until each is ready."""
        for role in self.config.processes:
            self.start(role, wait=False)
        for role in self.config.processes:
            self.wait_ready(role)


@contextlib.contextmanager
def running_stack(
    config: StackConfig | None = None, stack_class: type[Stack] | None = None
) -> Iterator[Stack]:
    """A fresh stack for the duration of the block, then every process of it stopped."""
    config = config or StackConfig()
    with exclusive_use_of_services(config.database):
        stack = (stack_class or Stack)(config)
        try:
            stack.prepare()
            stack.start_all()
            yield stack
        finally:
            stack.close()
