from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from allocation import sweeper
from allocation.apps import get_bus
from allocation.models import Delivery


class Command(BaseCommand):
    help = "Inspect and repair event deliveries: list dead ones, retry or discard them, prune."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("dead", help="list dead deliveries with their last error")
        for name, what in (("retry", "retry dead deliveries now"), ("discard", "give up on them")):
            p = sub.add_parser(name, help=what)
            p.add_argument("ids", nargs="*", type=int, help="delivery ids")
            p.add_argument("--all", action="store_true", help="every dead delivery")
        p = sub.add_parser("prune", help="delete finished deliveries; the event log is kept")
        p.add_argument("--older-than-days", type=float, required=True)

    def handle(self, *args, action, **options):
        getattr(self, f"do_{action}")(**options)

    def _dead_ids(self, ids, all, **_):
        if not ids and not all:
            raise CommandError("name delivery ids, or pass --all")
        dead = Delivery.objects.filter(status=Delivery.Status.DEAD)
        return list(dead.values_list("pk", flat=True)) if all else ids

    def do_dead(self, **_):
        dead = Delivery.objects.filter(status=Delivery.Status.DEAD).select_related("event")
        for d in dead.order_by("pk"):
            error = d.last_error.strip().splitlines()[-1:] or [""]
            self.stdout.write(
                f"{d.pk}\t{d.event.type} {d.event.sku} v{d.event.version}\t{d.handler}\t"
                f"{d.attempts} attempts\t{error[0]}"
            )
        self.stdout.write(f"{dead.count()} dead deliveries")

    def do_retry(self, **options):
        ids = sweeper.retry(self._dead_ids(**options))
        get_bus().wake_workers(ids)
        self.stdout.write(self.style.SUCCESS(f"Retrying {len(ids)} deliveries."))

    def do_discard(self, **options):
        count = sweeper.discard(self._dead_ids(**options))
        self.stdout.write(self.style.SUCCESS(f"Discarded {count} deliveries."))

    def do_prune(self, older_than_days, **_):
        count = sweeper.prune(timedelta(days=older_than_days))
        self.stdout.write(self.style.SUCCESS(f"Pruned {count} finished deliveries."))
