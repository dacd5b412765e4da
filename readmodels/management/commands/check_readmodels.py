from django.core.management.base import BaseCommand, CommandError

from readmodels.consistency import CHECKS


class Command(BaseCommand):
    help = "Compare every read model with the write side; exit non-zero and name the differences."

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=50, help="differences shown per model")

    def handle(self, *args, limit, **options):
        drifted = 0
        for name, check in CHECKS.items():
            differences = 0
            for difference in check():
                differences += 1
                if differences <= limit:
                    self.stdout.write(f"{name}: {difference}")
            if differences > limit:
                self.stdout.write(f"{name}: ... and {differences - limit} more")
            status = "OK" if not differences else f"{differences} differences"
            self.stdout.write(f"{name}: {status}")
            drifted += differences
        if drifted:
            raise CommandError(f"read models drifted from the write side ({drifted} differences)")
        self.stdout.write(self.style.SUCCESS("Read models match the write side."))
