"""Test settings: the project's settings, pointed at the local PostgreSQL and Redis by default.

The tests that need PostgreSQL or Redis fail (they never skip) when those are not there.
Override any of these with the same environment variables as in production.
"""

import os

os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/allocation")
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/0")
# Integration tests run tasks eagerly; the e2e tests start a real worker on a real broker.
os.environ["CELERY_BROKER_URL"] = ""
os.environ["CELERY_TASK_ALWAYS_EAGER"] = "1"

from config.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
