from django.core.management.base import BaseCommand

from allocation.apps import get_runner


class Command(BaseCommand):
    help = (
        "Deliver the due deliveries (pending, and past their lease or backoff) in this "
        "process, one worker step; Celery beat has a worker do the same every "
        "ALLOCATION_SWEEP_INTERVAL seconds."
    )

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=None, help="most deliveries per step")
        parser.add_argument(
            "--until-empty", action="store_true", help="step again until nothing is due"
        )

    def handle(self, *args, limit, until_empty, **options):
        runner = get_runner()
        total = 0
        while True:
            step = runner.run_due(limit=limit)
            total += step.taken
            if step.taken:
                self.stdout.write(f"delivered a step of {step.taken} ({total} so far)")
            if not (until_empty and step.taken):
                break
        self.stdout.write(self.style.SUCCESS(f"Took {total} due deliveries."))
