"""Secrets stay secret: no token, password or key in the logs, and no debug mode by accident.

Every log record of a run of requests (successes, refusals, validation errors and a crash) is
captured at DEBUG, formatted with the service's own formatters, and searched for the API
token, the password, the metrics token and SECRET_KEY. The error e-mail Django sends to
ADMINS on a crash is searched too. Then the settings module, in a clean environment: DEBUG is
off unless DJANGO_DEBUG says otherwise, and without DJANGO_SECRET_KEY it refuses to start.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as conf
from django.contrib.auth.models import User
from django.core import mail
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from allocation.apps import get_bus
from allocation.tracing import JsonFormatter, TraceFilter

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-but-longer-7c1d"
METRICS_TOKEN = "metrics-bearer-0b9e44"
FORGED_TOKEN = "f" * 40  # a credential someone tried: not logged either
PLAIN = logging.Formatter(conf.LOGGING["formatters"]["plain"]["format"])


@pytest.fixture
def every_log_record(caplog):
    """caplog at DEBUG on the root logger, and on the loggers that do not propagate to it."""
    caplog.set_level(logging.DEBUG)
    silent = [
        logging.getLogger(name)
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger) and not logger.propagate
    ]
    levels = {logger: logger.level for logger in silent}
    for logger in silent:
        logger.setLevel(logging.DEBUG)
        if caplog.handler not in logger.handlers:
            logger.addHandler(caplog.handler)
    yield caplog
    for logger, level in levels.items():
        logger.setLevel(level)
        if caplog.handler in logger.handlers:
            logger.removeHandler(caplog.handler)


def log_text(records: list[logging.LogRecord]) -> str:
    """Each record as the console would print it (plain and JSON), and every attribute."""
    trace, as_json, lines = TraceFilter(), JsonFormatter(), []
    for record in records:
        trace.filter(record)
        lines += [PLAIN.format(record), as_json.format(record), repr(vars(record))]
    return "\n".join(lines)


@pytest.fixture
def allocator_with_token(allocators_group, settings) -> tuple[APIClient, str]:
    settings.ALLOCATION_METRICS_TOKEN = METRICS_TOKEN
    user = User.objects.create_user("ops-robot", password=PASSWORD)
    user.groups.add(allocators_group)
    key = Token.objects.create(user=user).key
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client, key


def secrets(key: str) -> dict[str, str]:
    return {
        "api token": key,
        "password": PASSWORD,
        "metrics token": METRICS_TOKEN,
        "forged token": FORGED_TOKEN,
        "SECRET_KEY": conf.SECRET_KEY,
    }


@pytest.mark.django_db(transaction=True)
def test_no_secret_reaches_the_logs(allocator_with_token, every_log_record, settings, monkeypatch):
    client, key = allocator_with_token
    settings.ADMINS = [("Ops", "ops@example.com")]  # crashes are mailed: that is a log too

    # work that succeeds
    assert client.post("/api/v1/batches", {"ref": "b1", "sku": "LAMP", "qty": 5}).status_code == 201
    body = {"orderid": "o1", "sku": "LAMP", "qty": 2}
    assert client.post("/api/v1/allocations", body, HTTP_IDEMPOTENCY_KEY="k-1").status_code == 201
    assert client.post("/allocate", {"orderid": "o2", "sku": "LAMP", "qty": 1}).status_code == 202
    assert client.get("/api/v1/events").status_code == 200
    # refusals and bad input
    too_much = {"orderid": "o3", "sku": "LAMP", "qty": 50}
    assert client.post("/api/v1/allocations", too_much).status_code == 409  # out of stock
    assert client.post("/api/v1/batches", {"ref": "b1", "sku": "LAMP"}).status_code == 400
    assert client.get("/api/v1/batches/nope").status_code == 404
    forged = APIClient()
    forged.credentials(HTTP_AUTHORIZATION=f"Token {FORGED_TOKEN}")
    assert forged.get("/api/v1/stock").status_code == 401
    assert (
        APIClient().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {FORGED_TOKEN}").status_code == 401
    )
    browser = APIClient()
    assert not browser.login(username="ops-robot", password=PASSWORD + "-wrong")
    login = browser.post("/admin/login/", {"username": "ops-robot", "password": PASSWORD})
    assert login.status_code == 200  # not staff: the form says no

    # a crash inside a command
    def crash(*args, **kwargs):
        raise RuntimeError("the bus broke")

    monkeypatch.setattr(get_bus(), "handle", crash)
    client.raise_request_exception = False
    crashed = client.post("/api/v1/batches", {"ref": "b2", "sku": "LAMP", "qty": 1})
    assert crashed.status_code == 500
    assert "Traceback" not in crashed.content.decode()  # DEBUG is off: no technical page

    text = log_text(every_log_record.records)
    # the capture saw the requests that failed, so a leak there would have been seen
    for expected in ("Unauthorized: /api/v1/stock", "Internal Server Error: /api/v1/batches"):
        assert expected in text
    assert "RuntimeError: the bus broke" in text
    for name, secret in secrets(key).items():
        assert secret not in text, f"the {name} is in the logs"
    (report,) = [m for m in mail.outbox if m.to == ["ops@example.com"]]
    assert "the bus broke" in report.body
    assert "HTTP_AUTHORIZATION" in report.body  # the request's headers are there, cleansed
    for message in mail.outbox:  # the error report, and the out-of-stock notice
        for name, secret in secrets(key).items():
            assert secret not in message.body, f"the {name} is in an e-mail"
            assert secret not in message.subject


# --- settings in a clean environment ---------------------------------------------------------

SHOW_SETTINGS = (
    "from django.conf import settings; "
    "print('DEBUG', settings.DEBUG); "
    "print('RENDERERS', settings.REST_FRAMEWORK['DEFAULT_RENDERER_CLASSES'])"
)


def load_settings(**env: str) -> subprocess.CompletedProcess:
    """Import config.settings in a fresh interpreter with nothing but `env` (and PATH)."""
    clean = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "config.settings", **env}
    return subprocess.run(
        [sys.executable, "-c", SHOW_SETTINGS],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "debug"),
    [
        ({"DJANGO_SECRET_KEY": "k"}, False),
        ({"DJANGO_SECRET_KEY": "k", "DJANGO_DEBUG": "0"}, False),
        ({"DJANGO_SECRET_KEY": "k", "DJANGO_DEBUG": "false"}, False),
        ({"DJANGO_SECRET_KEY": "k", "DJANGO_DEBUG": ""}, False),
        ({"DJANGO_SECRET_KEY": "k", "DJANGO_DEBUG": "1"}, True),
        ({"DJANGO_DEBUG": "true"}, True),  # local development needs no key
    ],
)
def test_debug_is_off_unless_django_debug_turns_it_on(env, debug):
    result = load_settings(**env)

    assert result.returncode == 0, result.stderr
    assert f"DEBUG {debug}" in result.stdout
    # the browsable API (HTML forms, debug-only) is there only in debug mode
    assert ("BrowsableAPIRenderer" in result.stdout) is debug


@pytest.mark.parametrize(
    "env",
    [{}, {"DJANGO_DEBUG": "0"}, {"DJANGO_DEBUG": "off"}, {"DJANGO_SECRET_KEY": ""}],
    ids=["nothing", "debug-0", "debug-off", "empty-key"],
)
def test_settings_refuse_to_start_without_a_secret_key_unless_debugging(env):
    result = load_settings(**env)

    assert result.returncode != 0, result.stdout
    assert "ImproperlyConfigured" in result.stderr
    assert "DJANGO_SECRET_KEY" in result.stderr
    assert "DEBUG" not in result.stdout  # nothing ran on a default key
