from django.apps import AppConfig


class AllocationConfig(AppConfig):
    name = "allocation"
    verbose_name = "Allocation"

    def ready(self) -> None:
        # Wiring only: ready() may run more than once and must not touch the database.
        from allocation.api import authentication  # noqa: F401 (the token cache's signals)
        from allocation.bootstrap import bootstrap

        self.bus = bootstrap()


def get_bus():
    """The bus that AllocationConfig.ready() built."""
    from django.apps import apps

    return apps.get_app_config("allocation").bus
