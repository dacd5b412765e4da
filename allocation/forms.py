"""Admin forms that turn what staff type into commands, and the domain's refusals into form errors.

A form never saves a model: `dispatch()` sends one command through the bus, and whatever the
domain refuses comes back as an error on the form, with nothing changed.
"""

from __future__ import annotations

import uuid
from typing import Any

from django import forms
from django.contrib.admin.widgets import AdminDateWidget

from allocation.domain import commands
from allocation.domain.model import (
    DomainError,
    DuplicateBatch,
    InvalidEta,
    InvalidQuantity,
)

# PostgreSQL integer columns hold quantities; a larger number would fail in the database.
MAX_QTY = 2**31 - 1
MAX_REFERENCE = 255

# Which field a domain refusal belongs to; anything else is shown above the form.
ERROR_FIELDS: dict[type[DomainError], str] = {
    DuplicateBatch: "ref",
    InvalidQuantity: "qty",
    InvalidEta: "eta",
}


class CommandForm(forms.Form):
    """A form whose valid data becomes one command, dispatched through the bus."""

    def command(self) -> commands.Command:
        raise NotImplementedError

    def dispatch(self, bus: Any) -> bool:
        """Send the command; return True when the domain accepted it.

        A refusal (`DomainError`) is added to the form's errors. The correlation id of the
        chain the command started is kept in `self.correlation_id`, for a link to its events.
        """
        assert self.is_valid(), "dispatch() needs a valid form"
        self.correlation_id = str(uuid.uuid4())
        try:
            self.result = bus.handle(self.command(), correlation_id=self.correlation_id)
        except DomainError as refused:
            field = ERROR_FIELDS.get(type(refused))
            self.add_error(field if field in self.fields else None, str(refused))
            return False
        return True


def quantity_field(label: str, help_text: str) -> forms.IntegerField:
    return forms.IntegerField(
        label=label, min_value=1, max_value=MAX_QTY, help_text=help_text, localize=False
    )


class AddBatchForm(CommandForm):
    ref = forms.CharField(
        label="Batch reference",
        max_length=MAX_REFERENCE,
        help_text="A unique name for the batch, as on the purchase order or shipment.",
    )
    sku = forms.CharField(
        label="SKU",
        max_length=MAX_REFERENCE,
        help_text="The product's stock-keeping unit. A new SKU creates the product.",
    )
    qty = quantity_field(
        "Quantity purchased", "How many units the batch holds (a whole number, at least 1)."
    )
    eta = forms.DateField(
        label="Expected arrival (ETA)",
        required=False,
        widget=AdminDateWidget,
        help_text="Leave empty when the stock is already in the warehouse. Format: YYYY-MM-DD.",
    )

    def command(self) -> commands.CreateBatch:
        data = self.cleaned_data
        eta = data["eta"]
        return commands.CreateBatch(
            ref=data["ref"],
            sku=data["sku"],
            qty=data["qty"],
            eta=eta.isoformat() if eta else None,
        )


class ChangeQuantityForm(CommandForm):
    qty = quantity_field(
        "New quantity purchased",
        "Order lines that no longer fit are taken off this batch, newest first, and "
        "allocated to another batch of the same SKU when one has room.",
    )

    def __init__(self, *args: Any, batch_ref: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.batch_ref = batch_ref

    def command(self) -> commands.ChangeBatchQuantity:
        return commands.ChangeBatchQuantity(ref=self.batch_ref, qty=self.cleaned_data["qty"])
