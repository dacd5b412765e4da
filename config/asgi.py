import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_asgi_application()

# Web requests only: a stuck lock or a runaway query cannot hold a request (allocation/database.py).
from django.db.backends.signals import connection_created  # noqa: E402

from allocation.database import limit_web_statements  # noqa: E402

connection_created.connect(limit_web_statements)
