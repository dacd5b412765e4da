"""gunicorn's settings: `gunicorn -c config/gunicorn.py config.wsgi` (make web and
docker-compose run it so). Command-line options override these.

Threaded workers: a request that waits (for its read-your-writes ring, for PostgreSQL, for
Redis) leaves its process free to serve another, so waits do not cap throughput; two
processes keep both cores of a small machine busy. docs/benchmarks.md has the measurements.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "8"))
timeout = 30
