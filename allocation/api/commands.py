"""How an API view runs a command: through the bus, then (bounded) until its read-model
projections show it, so that a client that reads straight after a write sees it."""

from __future__ import annotations

from typing import Any

from allocation.apps import get_bus, read_model_handlers
from allocation.domain import commands
from allocation.unit_of_work import Receipt
from allocation.wakeups import wait_for_deliveries


def run_command(
    command: commands.Command, correlation_id: str, wait: float | None
) -> tuple[Any, bool]:
    """The command's result, and whether its projections were applied within `wait` seconds
    (None: do not wait). The write has committed either way."""
    receipt = Receipt(correlation_id)
    result = get_bus().handle(command, correlation_id=correlation_id, receipt=receipt)
    if wait is None:
        return result, False
    return result, wait_for_deliveries(receipt, read_model_handlers(), wait)
