import sys

from django.core.management.base import BaseCommand, CommandError

from readmodels.consistency import CHECKS
from readmodels.rebuild import MODELS, rebuild


class Command(BaseCommand):
    help = (
        "Rebuild read models by replaying the event log. Safe while the service runs: readers "
        "see the old rows until the new ones commit."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "models", nargs="*", metavar="MODEL", help=f"{', '.join(MODELS)} or all (the default)"
        )

    def handle(self, *args, models, **options):
        unknown = set(models) - {*MODELS, "all"}
        if unknown:
            raise CommandError(f"unknown read model {', '.join(sorted(unknown))}")
        chosen = set(MODELS) if not models or "all" in models else set(models)
        written = rebuild(chosen, self.progress)
        self.stdout.write("")
        for name, count in written.items():
            self.stdout.write(f"{name}: {count} rows rebuilt")
        drift = [f"{name}: {d}" for name, check in CHECKS.items() for d in check()]
        for line in drift[:50]:
            self.stdout.write(line)
        if drift:
            raise CommandError(f"{len(drift)} differences with the write side after the rebuild")
        self.stdout.write(self.style.SUCCESS("Read models rebuilt and match the write side."))

    def progress(self, done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        bar = "#" * filled + "-" * (width - filled)
        end = "\n" if done == total else ""
        self.stdout.write(f"\rreplaying [{bar}] {done}/{total} events", ending=end)
        if not sys.stdout.isatty():
            self.stdout.flush()
