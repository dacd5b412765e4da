"""SQL statements per allocation, by phase: counted in a Django process on the bench database.

The web's command (`bus.handle(Allocate)`), one read-your-writes check of the database, and
worker steps (`runner.deliver`, `runner.run_due`) of one and of thirty `Allocated` events, each
under `connection.execute_wrapper`, with the wall time of each phase (single-threaded, machine
idle).
"""

from __future__ import annotations

import json

from tests.e2e.harness import Stack

SCRIPT = r"""
import json, time, uuid
from collections import Counter
from django.db import connection
from allocation.bootstrap import bootstrap, READ_MODEL_HANDLERS
from allocation.domain import commands
from allocation.unit_of_work import Receipt
from allocation.wakeups import wait_for_deliveries

class Log:
    def __init__(self):
        self.kinds = Counter()
        self.transactions = 0
    def __call__(self, execute, sql, params, many, context):
        word = sql.split()[0].upper()
        self.kinds[word] += 1
        return execute(sql, params, many, context)

def measured(fn, repeat):
    logs, times = [], []
    for i in range(repeat):
        log = Log()
        start = time.perf_counter()
        with connection.execute_wrapper(log):
            fn(i)
        times.append(time.perf_counter() - start)
        logs.append(log)
    times.sort()
    return {"statements": dict(logs[-1].kinds), "total": sum(logs[-1].kinds.values()),
            "median_ms": round(1000 * times[len(times) // 2], 2)}

wiring = bootstrap(wake=[].extend)
sku = "SPREAD-0"
receipts = []
result = {}
def command(i):
    receipt = Receipt(str(uuid.uuid4()))
    receipts.append(receipt)
    wiring.bus.handle(
        commands.Allocate(f"qc-{uuid.uuid4().hex}", sku, 1), receipt.correlation_id, receipt
    )
result["web: bus.handle(Allocate)"] = measured(command, 30)
def poll(i):
    wait_for_deliveries(receipts[i], READ_MODEL_HANDLERS, 0, wakeups=None)
result["web: one read-your-writes check of the database"] = measured(poll, 30)
def step_of_one(i):
    wiring.runner.deliver([d.id for d in receipts[i].deliveries])
result["worker: a step of one Allocated (3 deliveries)"] = measured(step_of_one, 30)
for i in range(30):
    command(30 + i)
def step_of_thirty(i):
    if i == 0:
        wiring.runner.run_due()
result["worker: one step of 30 Allocated (90 deliveries)"] = measured(step_of_thirty, 1)
print("QUERYCOUNT " + json.dumps(result))
"""


def count_queries(stack: Stack) -> dict:
    proc = stack.manage("querycount", "shell", "-c", SCRIPT, timeout=120)
    line = next(ln for ln in proc.log("stdout").splitlines() if ln.startswith("QUERYCOUNT "))
    return json.loads(line.removeprefix("QUERYCOUNT "))
