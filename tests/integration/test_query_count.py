"""A command's cost must not grow with the sku's allocation history."""

import pytest
from django.db import connection

from allocation import models as orm
from allocation.domain import commands

pytestmark = pytest.mark.django_db(transaction=True)


def given_history(sku, past_lines):
    orm.Product.objects.create(sku=sku, version_number=past_lines + 1)
    batch = orm.Batch.objects.create(
        reference=f"{sku}-b",
        product_id=sku,
        purchased_quantity=100_000,
        allocated_quantity=past_lines,
    )
    orm.Allocation.objects.bulk_create(
        orm.Allocation(orderid=f"past-{i}", sku=sku, qty=1, batch=batch, version=i + 2)
        for i in range(past_lines)
    )


class QueryLog:
    """Every statement a block runs, with the rows it returned or changed."""

    def __init__(self):
        self.statements = []

    def __call__(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        self.statements.append((sql.split()[0], context["cursor"].rowcount))
        return result

    @property
    def rows(self):
        return sum(max(count, 0) for _, count in self.statements)


def cost_of_one_allocation(bus, sku):
    log = QueryLog()
    with connection.execute_wrapper(log):
        assert bus.handle(commands.Allocate("new-order", sku, 1)) == f"{sku}-b"
    return log


def test_allocating_costs_the_same_with_10_or_2000_past_allocations(bus):
    given_history("SHORT", 10)
    given_history("LONG", 2000)

    short = cost_of_one_allocation(bus, "SHORT")
    long = cost_of_one_allocation(bus, "LONG")

    assert len(long.statements) == len(short.statements)
    assert long.rows == short.rows
    assert long.rows < 50, long.statements  # nothing near the history's size was read


def test_shrinking_a_batch_reads_only_the_lines_that_must_go(bus):
    from allocation.django_unit_of_work import DjangoUnitOfWork
    from allocation.unit_of_work import MessageContext

    given_history("BIG", 2000)
    log = QueryLog()
    uow = DjangoUnitOfWork(bus.subscriptions, MessageContext("c", "c"))

    with uow, connection.execute_wrapper(log):
        product = uow.products.get_by_batchref("BIG-b", keep=1999)  # one unit must go

    assert [a.line.orderid for a in product.allocations.values()] == ["past-1999"]
    assert log.rows < 10, log.statements  # not the 2,000 lines the batch holds


def given_done_deliveries(count):
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO allocation_storedevent (id, type, sku, version, payload, occurred_at,"
            " position, correlation_id, causation_id) SELECT gen_random_uuid(), 'Allocated',"
            " 'OLD', g, '{}', now(), 0, 'c', 'c' FROM generate_series(1, %s) g",
            [count],
        )
        cursor.execute(
            "INSERT INTO allocation_delivery (event_id, handler, status, attempts, last_error,"
            " next_attempt_at, done_at) SELECT id, h, 'done', 1, '', now(), now()"
            " FROM allocation_storedevent, unnest(ARRAY['a', 'b', 'c']) h"
        )
        cursor.execute("ANALYZE allocation_delivery")
        cursor.execute("ANALYZE allocation_storedevent")


def test_a_worker_step_reads_no_more_than_what_is_due_whatever_was_delivered_before():
    from allocation.bootstrap import bootstrap
    from allocation.outbox import DjangoDeliveryRepository

    given_done_deliveries(30_000)
    bootstrap(wake=[].extend).bus.handle(commands.CreateBatch("b1", "NEW", 10, None))
    statements = []

    def capture(execute, sql, params, many, context):
        statements.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(capture):
        taken = DjangoDeliveryRepository().take_due(500, also=[1])
    assert {d.event.sku for d in taken} == {"NEW"}

    (sql, params), *_ = statements
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row for (row,) in cursor.fetchall())
    # An index finds the due rows and the taken ones; no scan of the 90,000 done deliveries.
    assert "Seq Scan on allocation_delivery" not in plan, plan
