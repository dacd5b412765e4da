"""SQL statements per allocation, by phase: counted in a Django process on the bench database.

The web's command (`bus.handle(Allocate)`), one read-your-writes poll, and the worker's run of
the three deliveries of its `Allocated` event (`bus.deliver_all`), each under
`connection.execute_wrapper`, with the wall time of each phase (single-threaded, machine idle).
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
from allocation.outbox import wait_for_deliveries

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

lost = []
bus = bootstrap(dispatch=lost.extend)
sku = "SPREAD-0"
ids = []
result = {}
cids = []
def command(i):
    cid = str(uuid.uuid4())
    cids.append(cid)
    lost.clear()
    bus.handle(commands.Allocate(f"qc-{uuid.uuid4().hex}", sku, 1), correlation_id=cid)
    ids.append(list(lost))
result["web: bus.handle(Allocate)"] = measured(command, 30)
def poll(i):
    wait_for_deliveries(cids[i], READ_MODEL_HANDLERS, 0)
result["web: one read-your-writes poll"] = measured(poll, 30)
def deliver(i):
    bus.deliver_all(ids[i])
result["worker: deliver_all (3 deliveries of one Allocated)"] = measured(deliver, 30)
print("QUERYCOUNT " + json.dumps(result))
"""


def count_queries(stack: Stack) -> dict:
    proc = stack.manage("querycount", "shell", "-c", SCRIPT, timeout=120)
    line = next(ln for ln in proc.log("stdout").splitlines() if ln.startswith("QUERYCOUNT "))
    return json.loads(line.removeprefix("QUERYCOUNT "))
