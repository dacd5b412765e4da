from django.core.management.base import BaseCommand, CommandError

from allocation.database import wait_until_reachable


class Command(BaseCommand):
    help = (
        "Wait until the database answers (for start-up scripts: run it before migrate, so a "
        "database that starts slower than the service is waited for, not crashed on)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--timeout", type=float, default=60.0, help="seconds to wait at most (default 60)"
        )

    def handle(self, *args, timeout, **options):
        def waiting(pause: float) -> None:
            self.stderr.write(f"the database does not answer yet; trying again in {pause:.1f}s")

        if not wait_until_reachable(timeout, on_wait=waiting):
            raise CommandError(f"the database did not answer within {timeout:g}s")
        self.stdout.write(self.style.SUCCESS("The database answers."))
