from datetime import date, timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from allocation.apps import get_bus
from allocation.domain import commands
from allocation.models import Batch

DEMO_BATCHES = [
    ("warehouse-lamp", "RED-LAMP", 100, None),
    ("ship-lamp-1", "RED-LAMP", 50, 7),
    ("warehouse-chair", "BLUE-CHAIR", 20, None),
    ("ship-chair-1", "BLUE-CHAIR", 40, 14),
    ("ship-table-1", "OAK-TABLE", 10, 30),
]
DEMO_ORDERS = [("order-1", "RED-LAMP", 10), ("order-2", "BLUE-CHAIR", 5)]


class Command(BaseCommand):
    help = "Create a demo admin user with an API token, and demo batches and allocations."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default="admin")

    def handle(self, *args, username, password, **options):
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            user.set_password(password)
            user.save()
        token, _ = Token.objects.get_or_create(user=user)

        bus = get_bus()
        today = date.today()
        for ref, sku, qty, days in DEMO_BATCHES:
            if not Batch.objects.filter(reference=ref).exists():
                eta = (today + timedelta(days=days)).isoformat() if days is not None else None
                bus.handle(commands.CreateBatch(ref, sku, qty, eta))
                self.stdout.write(f"  batch {ref}: {qty} x {sku}, eta {eta or 'in the warehouse'}")
        for orderid, sku, qty in DEMO_ORDERS:
            batchref = bus.handle(commands.Allocate(orderid, sku, qty))
            self.stdout.write(f"  {orderid}: {qty} x {sku} -> {batchref}")

        self.stdout.write(self.style.SUCCESS("Demo data ready."))
        self.stdout.write(f"  admin login: {username} / {password if created else '(unchanged)'}")
        self.stdout.write(f"  API token:   {token.key}")
