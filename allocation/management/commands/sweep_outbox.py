from django.core.management.base import BaseCommand

from allocation.sweeper import sweep
from allocation.tasks import dispatch_deliveries


class Command(BaseCommand):
    help = (
        "Dispatch every due delivery (pending, past its lease or backoff) once. "
        "Celery beat does the same every ALLOCATION_SWEEP_INTERVAL seconds."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=None, help="most deliveries per sweep")
        parser.add_argument(
            "--until-empty", action="store_true", help="sweep again until nothing is due"
        )

    def handle(self, *args, limit, until_empty, **options):
        total = 0
        while True:
            swept = sweep(dispatch_deliveries, limit)
            total += swept
            if swept:
                self.stdout.write(f"dispatched {swept} deliveries ({total} so far)")
            if not (until_empty and swept):
                break
        self.stdout.write(self.style.SUCCESS(f"Swept {total} due deliveries."))
