import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from kombu.utils.url import maybe_sanitize_url

from allocation.apps import get_bus
from allocation.consumer import consume


class Command(BaseCommand):
    help = "Consume external events from Redis pub/sub (channel change_batch_quantity)."

    def add_arguments(self, parser):
        parser.add_argument("--redis-url", default=settings.REDIS_URL, help="default: REDIS_URL")

    def handle(self, *args, redis_url, **options):
        if not redis_url:
            raise CommandError("Set REDIS_URL (or pass --redis-url) to consume external events.")
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        where = maybe_sanitize_url(redis_url)  # no password in the logs
        self.stdout.write(f"Consuming external events from {where}; Ctrl-C stops.")
        consume(get_bus(), redis_url, stop)
        self.stdout.write("Stopped.")
