"""The Product aggregate against a plain reference model of stock, under random commands."""

from datetime import date

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allocation.domain import events
from allocation.domain.model import (
    AllocationConflict,
    DuplicateBatch,
    NotAllocated,
    OrderLine,
    Product,
)

REFS = st.sampled_from(["b1", "b2", "b3", "b4"])
ORDERS = st.sampled_from([f"o{i}" for i in range(8)])
QTYS = st.integers(min_value=1, max_value=20)
ETAS = st.one_of(st.none(), st.dates(min_value=date(2030, 1, 1), max_value=date(2030, 1, 5)))


class ReferenceStock:
    """Stock as a warehouse clerk would keep it: dicts and a counter, no cleverness."""

    def __init__(self):
        self.batches = {}  # ref -> [purchased, eta]
        self.lines = {}  # orderid -> (qty, ref, sequence)
        self.sequence = 0

    def allocated(self, ref):
        return sum(qty for qty, r, _ in self.lines.values() if r == ref)

    def allocate(self, orderid, qty):
        if orderid in self.lines:
            held, ref, _ = self.lines[orderid]
            return ("conflict", None) if held != qty else ("same", ref)
        preference = sorted(
            self.batches, key=lambda r: (self.batches[r][1] is not None, self.batches[r][1], r)
        )
        for ref in preference:
            if self.batches[ref][0] - self.allocated(ref) >= qty:
                self.sequence += 1
                self.lines[orderid] = (qty, ref, self.sequence)
                return ("allocated", ref)
        return ("out_of_stock", None)

    def change(self, ref, qty):
        self.batches[ref][0] = qty
        dropped = []
        latest_first = sorted(
            (o for o, (_, r, _) in self.lines.items() if r == ref),
            key=lambda o: self.lines[o][2],
            reverse=True,
        )
        for orderid in latest_first:
            if self.allocated(ref) <= qty:
                break
            dropped.append((orderid, self.lines.pop(orderid)[0]))
        return dropped


class ProductMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.product = Product("SKU")
        self.reference = ReferenceStock()
        self.last_version = 0

    def _events(self):
        recorded, self.product.events = self.product.events, []
        return recorded

    @rule(ref=REFS, qty=QTYS, eta=ETAS)
    def add_batch(self, ref, qty, eta):
        if ref in self.reference.batches:
            try:
                self.product.add_batch(ref, qty, eta)
            except DuplicateBatch:
                return
            raise AssertionError("a duplicate batch was accepted")
        self.product.add_batch(ref, qty, eta)
        self.reference.batches[ref] = [qty, eta]
        assert [type(e) for e in self._events()] == [events.BatchCreated]

    @rule(orderid=ORDERS, qty=QTYS)
    def allocate(self, orderid, qty):
        expected, ref = self.reference.allocate(orderid, qty)
        if expected == "conflict":
            try:
                self.product.allocate(OrderLine(orderid, "SKU", qty))
            except AllocationConflict:
                return
            raise AssertionError("a conflicting allocation was accepted")
        assert self.product.allocate(OrderLine(orderid, "SKU", qty)) == ref
        recorded = self._events()
        if expected == "out_of_stock":
            assert [type(e) for e in recorded] == [events.OutOfStock]
        elif expected == "same":
            assert recorded == []

    @rule(ref=REFS, qty=QTYS)
    def change_quantity(self, ref, qty):
        if ref not in self.reference.batches:
            return
        dropped = self.reference.change(ref, qty)
        self.product.change_batch_quantity(ref, qty)
        deallocated = [e for e in self._events() if isinstance(e, events.Deallocated)]
        assert [(e.orderid, e.qty) for e in deallocated] == dropped
        for orderid, line_qty in dropped:  # what the Deallocated handler does
            self.allocate(orderid, line_qty)

    @rule(orderid=ORDERS)
    def cancel(self, orderid):
        if orderid not in self.reference.lines:
            try:
                self.product.cancel(orderid)
            except NotAllocated:
                return
            raise AssertionError("cancelled a line that was not allocated")
        assert self.product.cancel(orderid).batchref == self.reference.lines.pop(orderid)[1]
        self._events()

    @invariant()
    def same_lines_as_the_reference(self):
        held = {o: (a.line.qty, a.batchref) for o, a in self.product.allocations.items()}
        assert held == {o: (qty, ref) for o, (qty, ref, _) in self.reference.lines.items()}

    @invariant()
    def no_batch_is_over_allocated_and_counters_add_up(self):
        for batch in self.product.batches:
            assert 0 <= batch.allocated_quantity <= batch.purchased_quantity
            assert batch.allocated_quantity == self.reference.allocated(batch.reference)

    @invariant()
    def the_version_never_goes_back(self):
        assert self.product.version_number >= self.last_version
        self.last_version = self.product.version_number


ProductMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_product_behaves_like_the_reference_model = ProductMachine.TestCase
