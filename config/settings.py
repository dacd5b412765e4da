"""Settings, all from the environment.

With no environment at all the service runs on SQLite with eager Celery tasks and console
email, so a fresh checkout works. Every variable is documented in the README.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or (
    "django-insecure-local-development-only" if DEBUG else ""
)
if not SECRET_KEY:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("Set DJANGO_SECRET_KEY (or DJANGO_DEBUG=1 for local development).")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI served from our static files, not a CDN
    "allocation.apps.AllocationConfig",
    "readmodels.apps.ReadmodelsConfig",
    "notifications.apps.NotificationsConfig",
]

MIDDLEWARE = [
    "allocation.metrics.RequestMetricsMiddleware",
    "allocation.database.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's and Swagger UI's static files under gunicorn (after collectstatic).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- database -------------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
# Persistent connections: opening a PostgreSQL connection costs more than a whole allocation.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DJANGO_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"].endswith("postgresql") and env.bool(
    "DJANGO_DB_SERVER_SIDE_BINDING", default=True
):
    # Parameters bound by the server, and statements a connection runs often prepared once:
    # PostgreSQL parses and plans them once per connection instead of once per execution, and
    # psycopg sends arrays without spelling them out as text. (Off: Django's default, values
    # interpolated on the client; needed behind a pgbouncer in transaction mode.)
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True,
        prepare_threshold=env.int("DJANGO_DB_PREPARE_THRESHOLD", default=5),
    )
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several threads (runserver, eager tasks) write to one file: wait for the lock.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env.str("DJANGO_STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- REST framework -------------------------------------------------------------------------
# The API's bodies are a few hundred bytes: refuse anything much larger unread (DRF's JSON
# parsing goes through request.body, which enforces this; the APIs answer 413).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DJANGO_DATA_UPLOAD_MAX_MEMORY_SIZE", default=256 * 1024)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "allocation.api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["allocation.api.parsers.JSONParser"],
    # The book-compatible endpoints' {"message"} errors; /api/v1 views use their own envelope.
    "EXCEPTION_HANDLER": "allocation.api.errors.compat_exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["allocation.api.throttling.WriteRateThrottle"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append(
        "rest_framework.renderers.BrowsableAPIRenderer"
    )
# Writes (v1 and book-compatible) per user, e.g. "100/second", "6000/minute"; "off" or empty
# disables the throttle. Counted in the default cache.
ALLOCATION_WRITE_THROTTLE_RATE = env.str("ALLOCATION_WRITE_THROTTLE_RATE", default="100/second")
if ALLOCATION_WRITE_THROTTLE_RATE.strip().lower() not in {"", "off", "none"}:
    import re

    if not re.fullmatch(r"\d+/[smhd][a-z]*", ALLOCATION_WRITE_THROTTLE_RATE.strip()):
        from django.core.exceptions import ImproperlyConfigured

        raise ImproperlyConfigured(
            "ALLOCATION_WRITE_THROTTLE_RATE must look like 100/second, 6000/minute or off"
        )

SPECTACULAR_SETTINGS = {
    "TITLE": "Allocation service API",
    "DESCRIPTION": (
        "Batches, allocations, stock and the event log of the inventory allocation service. "
        "Reads need an authenticated user (Token or session); each write needs the permission "
        "of its command (the group `allocators` holds them all). See docs/api.md."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its UI are public.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # No CDN: drf-spectacular-sidecar ships Swagger UI as static files.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "PREPROCESSING_HOOKS": ["allocation.api.v1.schema.documented_endpoints_only"],
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"DeliveryStatusEnum": "allocation.models.Delivery.Status"},
}

# --- Celery and Redis -----------------------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
# No broker configured: run tasks in-process right after commit, through the same code path.
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not CELERY_BROKER_URL)
CELERY_TASK_EAGER_PROPAGATES = False
if not CELERY_BROKER_URL:
    CELERY_BROKER_URL = "memory://localhost/"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=120)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=100)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A web request never hangs on a dead broker: one quick try, then the event waits in the outbox.
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    "socket_connect_timeout": 1,
    "socket_timeout": 5,
    "max_retries": 0,
}
# Keep the worker's DB connection across tasks (Celery closes it after every task otherwise).
CELERY_DB_REUSE_MAX = env.int("CELERY_DB_REUSE_MAX", default=1000)

# --- cache (the write throttle's counters, API tokens) ----------------------------------------
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "config.cache.ReusingRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("DJANGO_CACHE_KEY_PREFIX", default="allocation"),
            # A slow or dead Redis must not hold a request: the throttle then lets it through.
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- allocation service ---------------------------------------------------------------------
# API tokens and their users are cached this long (0: off); a save or delete of either drops
# the entry at once (allocation/api/authentication.py).
ALLOCATION_TOKEN_CACHE_SECONDS = env.int("ALLOCATION_TOKEN_CACHE_SECONDS", default=60)
# How long the book-compatible write endpoints wait for their read-model projections; also the
# most a /api/v1 write waits when the client asks for it with `Prefer: wait=<seconds>`.
ALLOCATION_READ_YOUR_WRITES_TIMEOUT = env.float("ALLOCATION_READ_YOUR_WRITES_TIMEOUT", default=2.0)
# Web requests give up on a lock, or a statement, after this many seconds and answer 503
# (0: no limit). Workers and management commands are not limited.
ALLOCATION_WEB_LOCK_TIMEOUT = env.float("ALLOCATION_WEB_LOCK_TIMEOUT", default=5.0)
ALLOCATION_WEB_STATEMENT_TIMEOUT = env.float("ALLOCATION_WEB_STATEMENT_TIMEOUT", default=20.0)
# Bounded retries for a command that lost a race on the same product (serialisation, deadlock).
ALLOCATION_COMMAND_RETRIES = env.int("ALLOCATION_COMMAND_RETRIES", default=5)
# Failed deliveries: exponential backoff with jitter, then parked as dead.
ALLOCATION_DELIVERY_MAX_ATTEMPTS = env.int("ALLOCATION_DELIVERY_MAX_ATTEMPTS", default=8)
ALLOCATION_DELIVERY_BACKOFF_BASE = env.float("ALLOCATION_DELIVERY_BACKOFF_BASE", default=1.0)
ALLOCATION_DELIVERY_BACKOFF_MAX = env.float("ALLOCATION_DELIVERY_BACKOFF_MAX", default=600.0)
# A worker step takes at most this many due deliveries at once (allocation/delivery.py).
ALLOCATION_DELIVERY_BATCH = env.int("ALLOCATION_DELIVERY_BATCH", default=500)
# A step holds the deliveries it took this long; if it dies, they are due again after it.
ALLOCATION_DELIVERY_LEASE = env.float("ALLOCATION_DELIVERY_LEASE", default=30.0)
# Beat has a worker run a step this often: the safety net for lost wake-ups and leases.
ALLOCATION_SWEEP_INTERVAL = env.float("ALLOCATION_SWEEP_INTERVAL", default=5.0)
# Workers commit what the outbox can derive again (projections, done-marks) without waiting for
# the disk; a command a worker runs still waits (docs/architecture.md, "Durability").
ALLOCATION_WORKER_ASYNC_COMMIT = env.bool("ALLOCATION_WORKER_ASYNC_COMMIT", default=True)
# /health/ says "degraded" once the oldest due delivery has waited longer than this (seconds):
# deliveries are stuck, not merely busy.
ALLOCATION_STALLED_AFTER = env.float("ALLOCATION_STALLED_AFTER", default=60.0)
if (
    max(CELERY_TASK_TIME_LIMIT, ALLOCATION_DELIVERY_BACKOFF_MAX)
    >= (CELERY_BROKER_TRANSPORT_OPTIONS["visibility_timeout"])
):
    from django.core.exceptions import ImproperlyConfigured

    # Redis hands an unacknowledged task to another worker after the visibility timeout.
    raise ImproperlyConfigured(
        "CELERY_VISIBILITY_TIMEOUT must exceed the task time limit and the longest retry backoff"
    )
# More subscribers, by event name: {"Allocated": ["package.module.handler"]}. For plugins, and
# for the fault tests that run a slow or failing handler in a real worker.
ALLOCATION_EXTRA_EVENT_HANDLERS = env.json("ALLOCATION_EXTRA_EVENT_HANDLERS", default={})
CELERY_BEAT_SCHEDULE = {
    "sweep-outbox": {"task": "allocation.sweep", "schedule": ALLOCATION_SWEEP_INTERVAL},
}

# Set to require `Authorization: Bearer <token>` on /metrics.
ALLOCATION_METRICS_TOKEN = env.str("ALLOCATION_METRICS_TOKEN", default="")

# --- notifications --------------------------------------------------------------------------
# Every domain event is appended to this Redis stream (trimmed to about MAXLEN entries).
ALLOCATION_EVENT_STREAM = env.str("ALLOCATION_EVENT_STREAM", default="allocation.events")
ALLOCATION_EVENT_STREAM_MAXLEN = env.int("ALLOCATION_EVENT_STREAM_MAXLEN", default=1_000_000)
OUT_OF_STOCK_EMAIL_RECIPIENTS = env.list(
    "OUT_OF_STOCK_EMAIL_RECIPIENTS", default=["stock@example.com"]
)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="allocation@example.com")
if "EMAIL_URL" in env:
    vars().update(env.email_url("EMAIL_URL"))
else:
    EMAIL_BACKEND = env.str(
        "EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend"
    )
    EMAIL_HOST = env.str("EMAIL_HOST", default="localhost")
    EMAIL_PORT = env.int("EMAIL_PORT", default=25)
    EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
    EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
    EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
    EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)

# --- production hardening (all off unless set) ----------------------------------------------
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=False)
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)
if env.bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- logging --------------------------------------------------------------------------------
LOG_LEVEL = env.str("DJANGO_LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"trace": {"()": "allocation.tracing.TraceFilter"}},
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s "
            "[%(correlation_id)s %(handling)s] %(message)s"
        },
        "json": {"()": "allocation.tracing.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": env.str("DJANGO_LOG_FORMAT", default="plain"),
            "filters": ["trace"],
        }
    },
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        name: {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False}
        for name in ("allocation", "readmodels", "notifications")
    },
}
