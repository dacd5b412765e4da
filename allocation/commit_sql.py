"""A command's writes in one statement, on PostgreSQL: the product's changes, its events and
their deliveries, as data-modifying CTEs of one `WITH ... SELECT`.

The unit of work uses it when a commit changed at most one product and no new order line sits
on a batch created in the same commit (its id would not be known yet); otherwise the ORM
writes the same rows statement by statement. Either way the rows are the same, and a
constraint that refuses one (an over-allocated batch, a second row for an order line) fails
the whole statement, and the transaction, as before.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping

from django.db import connection
from django.utils import timezone

from allocation.domain import events
from allocation.models import Delivery, StoredEvent
from allocation.repository import BATCHES, LINES, PRODUCTS, Changes, StaleProduct, parse_json
from allocation.unit_of_work import MessageContext, NewDelivery

EVENTS = StoredEvent._meta.db_table
DELIVERIES = Delivery._meta.db_table


def can_write(changes: list[Changes]) -> bool:
    if len(changes) > 1:
        return False
    new_refs = {b.reference for c in changes for b in c.new_batches}
    return not any(ref in new_refs for c in changes for _, _, ref, _ in c.new_lines)


def write(
    changes: Changes | None,
    new_events: list[events.Event],
    subscriptions: Mapping[str, tuple[str, ...]],
    context: MessageContext | None,
    durable: bool = False,
) -> list[NewDelivery]:
    """Write it all; return the deliveries written. Raises StaleProduct if the product's
    version moved since it was loaded. `durable`: this transaction's commit waits for the disk
    even if the session's default does not (at no extra round trip)."""
    ctes: list[str] = []
    params: list = []

    def cte(name: str, sql: str, *values) -> None:
        ctes.append(f"{name} AS ({sql})")
        params.extend(values)

    if changes is not None:
        _product_changes(changes, cte)
    if new_events:
        assert context is not None, "events need a context to be written"
        _events_and_deliveries(new_events, subscriptions, context, cte)
    if not ctes:
        return []
    checked = "(SELECT count(*) FROM product)" if changes is not None else "1"
    new_batches = (
        "(SELECT json_agg(json_build_array(id, reference)) FROM new_batches)"
        if changes is not None and changes.new_batches
        else "NULL"
    )
    written = (
        "(SELECT json_agg(json_build_array(id, handler) ORDER BY id) FROM deliveries)"
        if new_events
        else "NULL"
    )
    sync = ", set_config('synchronous_commit', 'on', true)" if durable else ""
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH {', '.join(ctes)} SELECT {checked}, {new_batches}, {written}{sync}", params
        )
        product_rows, batch_rows, delivery_rows, *_ = cursor.fetchone()
    if product_rows != 1:
        raise StaleProduct(changes.sku)
    if batch_rows:
        changes.batch_ids.update({ref: pk for pk, ref in parse_json(batch_rows)})
    return [NewDelivery(pk, handler) for pk, handler in parse_json(delivery_rows) or ()]


def _product_changes(changes: Changes, cte) -> None:
    if changes.loaded_version is None:
        cte(
            "product",
            f"INSERT INTO {PRODUCTS} (sku, version_number) VALUES (%s, %s) RETURNING 1",
            changes.sku,
            changes.version,
        )
    else:
        cte(
            "product",
            f"UPDATE {PRODUCTS} SET version_number = %s WHERE sku = %s AND version_number = %s"
            " RETURNING 1",
            changes.version,
            changes.sku,
            changes.loaded_version,
        )
    if changes.new_batches:
        b = changes.new_batches
        cte(
            "new_batches",
            f"INSERT INTO {BATCHES} (reference, sku, purchased_quantity, allocated_quantity, eta)"
            " SELECT r, %s, p, a, e FROM unnest(%s::text[], %s::int[], %s::int[], %s::date[])"
            " AS v(r, p, a, e) RETURNING id, reference",
            changes.sku,
            [x.reference for x in b],
            [x.purchased_quantity for x in b],
            [x.allocated_quantity for x in b],
            [x.eta for x in b],
        )
    if changes.changed_batches:
        pks, purchased, allocated = zip(*changes.changed_batches, strict=True)
        cte(
            "changed_batches",
            f"UPDATE {BATCHES} AS t SET purchased_quantity = v.p, allocated_quantity = v.a"
            " FROM unnest(%s::bigint[], %s::int[], %s::int[]) AS v(id, p, a) WHERE t.id = v.id"
            " RETURNING 1",
            list(pks),
            list(purchased),
            list(allocated),
        )
    ids = changes.batch_ids
    if changes.new_lines:
        cte(
            "new_lines",
            f"INSERT INTO {LINES} (orderid, sku, qty, batch_id, version)"
            " SELECT o, %s, q, b, v FROM unnest(%s::text[], %s::int[], %s::bigint[],"
            " %s::bigint[]) AS l(o, q, b, v) RETURNING 1",
            changes.sku,
            [orderid for orderid, *_ in changes.new_lines],
            [qty for _, qty, _, _ in changes.new_lines],
            [ids[ref] if ref else None for _, _, ref, _ in changes.new_lines],
            [version for *_, version in changes.new_lines],
        )
    if changes.changed_lines:
        cte(
            "changed_lines",
            f"UPDATE {LINES} AS t SET qty = COALESCE(l.q, t.qty), batch_id = l.b,"
            " version = l.v FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[])"
            " AS l(o, q, b, v) WHERE t.sku = %s AND t.orderid = l.o RETURNING 1",
            [orderid for orderid, *_ in changes.changed_lines],
            [qty for _, qty, _, _ in changes.changed_lines],
            [ids[ref] if ref else None for _, _, ref, _ in changes.changed_lines],
            [version for *_, version in changes.changed_lines],
            changes.sku,
        )


def _events_and_deliveries(new_events, subscriptions, context: MessageContext, cte) -> None:
    now = timezone.now()
    names = [type(e).__name__ for e in new_events]
    cte(
        "logged",
        f"INSERT INTO {EVENTS} (id, type, sku, version, payload, occurred_at, position,"
        " correlation_id, causation_id)"
        " SELECT i, t, s, v, p::jsonb, %s, n, %s, %s FROM unnest(%s::uuid[], %s::text[],"
        " %s::text[], %s::bigint[], %s::text[], %s::int[]) AS e(i, t, s, v, p, n)"
        " RETURNING id, type, position",
        now,
        context.correlation_id,
        context.causation_id,
        [uuid.uuid4() for _ in new_events],
        names,
        [e.sku for e in new_events],
        [e.version for e in new_events],
        [json.dumps(e.to_dict()) for e in new_events],
        list(range(len(new_events))),
    )
    routes = [
        (type_name, handler, rank)
        for type_name in set(names)
        for rank, handler in enumerate(subscriptions.get(type_name, ()))
    ]
    cte(
        "deliveries",
        f"INSERT INTO {DELIVERIES} (event_id, handler, status, attempts, last_error,"
        " next_attempt_at) SELECT logged.id, r.h, %s, 0, '', %s FROM logged"
        " JOIN unnest(%s::text[], %s::text[], %s::int[]) AS r(t, h, k) ON r.t = logged.type"
        " ORDER BY logged.position, r.k RETURNING id, handler",
        Delivery.Status.PENDING.value,
        now,
        [t for t, _, _ in routes],
        [h for _, h, _ in routes],
        [k for _, _, k in routes],
    )
