from django.apps import AppConfig


class AllocationConfig(AppConfig):
    name = "allocation"
    verbose_name = "Allocation"

    def ready(self) -> None:
        # Wiring only: ready() may run more than once and must not touch the database.
        from allocation.api import authentication  # noqa: F401 (the token cache's signals)
        from allocation.bootstrap import bootstrap

        self.wiring = bootstrap()


def _wiring():
    from django.apps import apps

    return apps.get_app_config("allocation").wiring


def get_bus():
    """The command bus that AllocationConfig.ready() built."""
    return _wiring().bus


def get_runner():
    """The delivery runner that AllocationConfig.ready() built."""
    return _wiring().runner


def read_model_handlers() -> frozenset[str]:
    """The names of the handlers whose effects read-your-writes waits for."""
    return _wiring().read_models
