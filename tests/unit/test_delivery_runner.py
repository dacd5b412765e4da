"""The delivery runner on fakes: worker steps over due deliveries from many commits, groups
applied as sets or one by one, failures that stay alone, and the chain of follow-up commands."""

import contextlib

import pytest
from django.db import OperationalError

from allocation.bootstrap import GroupSpec, handler_name
from allocation.domain import commands, events
from allocation.unit_of_work import Receipt, TransactionConflict
from tests.unit.fakes import DONE, PENDING, bootstrap_test_bus, bootstrap_test_runner


def out_of_stock(bus, sku="LAMP"):
    """One commit with an OutOfStock event for `sku`."""
    bus.handle(commands.CreateBatch(f"{sku}-1", sku, 5, None))
    bus.handle(commands.Allocate("o1", sku, 10))


def held():
    """A `wake` that keeps what it is told: commits happen, no step runs until the test says."""
    woken = []
    return woken, woken.append


# --- one delivery, one failure ------------------------------------------------------------------


def test_an_event_reaches_every_handler_even_when_one_of_them_fails():
    seen = []

    def note_before(event):
        seen.append(("before", event))

    def fail(event):
        raise RuntimeError("mail server down")

    def note_after(event):
        seen.append(("after", event))

    bus, store, _, _ = bootstrap_test_bus(
        event_handlers={events.OutOfStock: [note_before, fail, note_after]}
    )
    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))

    ref = bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert ref is None  # the command's caller does not see the event handler's failure
    out = events.OutOfStock(sku="LAMP", version=1)
    assert seen == [("before", out), ("after", out)]
    state = {d.handler: (d.status, d.attempts) for d in store.deliveries.values()}
    assert state == {
        handler_name(note_before): (DONE, 1),
        handler_name(fail): (PENDING, 1),
        handler_name(note_after): (DONE, 1),
    }
    failed = next(d for d in store.deliveries.values() if d.handler == handler_name(fail))
    assert "mail server down" in failed.last_error


def test_a_failing_event_handler_leaves_no_changes_behind():
    def add_spare_batch_then_fail(event, uow):
        with uow:
            uow.products.get(event.sku).add_batch("spare", 1, None)
            uow.commit()
        raise RuntimeError("after the commit, before the done-mark")

    bus, store, _, _ = bootstrap_test_bus(
        event_handlers={events.OutOfStock: [add_spare_batch_then_fail]}
    )
    out_of_stock(bus)

    assert [b.reference for b in store.products["LAMP"].batches] == ["LAMP-1"]
    assert [d.status for d in store.deliveries.values()] == [PENDING]


def test_a_failed_delivery_waits_out_its_backoff_then_runs_again():
    broken = [True]

    def flaky(event):
        if broken[0]:
            raise RuntimeError("down")

    wiring, store, _, _ = bootstrap_test_runner(event_handlers={events.OutOfStock: [flaky]})
    out_of_stock(wiring.bus)
    assert wiring.runner.run_due().taken == 0  # in its backoff: not due

    broken[0] = False
    store.time_passes()
    assert wiring.runner.run_due().taken == 1

    [delivery] = store.deliveries.values()
    assert (delivery.status, delivery.attempts) == (DONE, 2)


def test_a_delivery_that_loses_a_race_runs_again_at_once_within_its_attempt():
    races = []

    def loses_once(event):
        if not races:
            races.append(event)
            raise TransactionConflict("deadlock detected")

    bus, store, _, _ = bootstrap_test_bus(event_handlers={events.OutOfStock: [loses_once]})
    out_of_stock(bus)

    assert [(d.status, d.attempts) for d in store.deliveries.values()] == [(DONE, 1)]


def test_a_delivery_that_keeps_losing_races_waits_for_a_retry():
    def always_loses(event):
        raise TransactionConflict("deadlock detected")

    bus, store, _, _ = bootstrap_test_bus(event_handlers={events.OutOfStock: [always_loses]})
    out_of_stock(bus)

    [delivery] = store.deliveries.values()
    assert (delivery.status, delivery.attempts) == (PENDING, 1)
    assert "deadlock detected" in delivery.last_error


def test_a_delivery_the_database_could_not_take_is_neither_done_nor_failed():
    def database_gone(event):
        raise OperationalError("the connection is lost")

    _, wake = held()
    wiring, store, _, _ = bootstrap_test_runner(
        event_handlers={events.OutOfStock: [database_gone]}, wake=wake
    )
    out_of_stock(wiring.bus)

    step = wiring.runner.run_due()

    [delivery] = store.deliveries.values()
    assert step.interrupted == [delivery.id]  # the worker tries it again soon: see tasks.py
    assert (delivery.status, delivery.attempts, delivery.last_error) == (PENDING, 1, None)


# --- steps --------------------------------------------------------------------------------------


def test_a_step_takes_the_due_deliveries_of_many_commits_at_once():
    seen = []

    def note(event):
        seen.append(event.sku)

    woken, wake = held()
    wiring, _, _, _ = bootstrap_test_runner(event_handlers={events.OutOfStock: [note]}, wake=wake)
    for sku in ("LAMP", "CHAIR", "TABLE"):
        out_of_stock(wiring.bus, sku)
    assert len(woken) == 3 and seen == []  # three commits woke a worker; none has run yet

    assert wiring.runner.run_due().taken == 3
    assert sorted(seen) == ["CHAIR", "LAMP", "TABLE"]
    assert wiring.runner.run_due().taken == 0  # done: nothing is due any more


def test_a_step_takes_at_most_a_batch_and_wakes_another_worker_for_the_rest():
    woken, wake = held()
    wiring, _, _, _ = bootstrap_test_runner(
        event_handlers={events.OutOfStock: [lambda event: None]}, wake=wake
    )
    for sku in ("A", "B", "C"):
        out_of_stock(wiring.bus, sku)
    woken.clear()

    assert wiring.runner.run_due(limit=2).taken == 2
    assert len(woken) == 1  # "more may be due"
    assert wiring.runner.run_due(limit=2).taken == 1
    assert len(woken) == 1


def test_a_delivery_runs_its_handler_once_however_often_it_is_taken():
    wiring, store, _, publisher = bootstrap_test_runner()
    wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))
    wiring.bus.handle(commands.Allocate("o1", "LAMP", 10))

    wiring.runner.run_due(also=list(store.deliveries))  # every one of them, named again

    assert len(publisher.published) == 1


def test_a_transport_that_is_down_only_delays_delivery():
    def broker_down(deliveries):
        raise ConnectionError("broker down")

    wiring, store, _, publisher = bootstrap_test_runner(wake=broker_down)
    wiring.bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))

    assert wiring.bus.handle(commands.Allocate("o1", "LAMP", 10)) == "b1"
    assert publisher.published == []
    assert len([d for d in store.deliveries.values() if d.status == PENDING]) == 3

    wiring.runner.run_due()  # what beat's sweep does: they were due from their commit on

    assert [channel for channel, _ in publisher.published] == ["line_allocated"]
    assert [type_name for _, type_name, _ in publisher.streamed] == ["BatchCreated", "Allocated"]


def test_events_leave_only_after_the_command_commits():
    def allocate_then_fail(cmd, uow):
        with uow:
            uow.products.get(cmd.sku, orderid=cmd.orderid).add_batch("spare", 1, None)
            raise RuntimeError("before the commit")

    from allocation.bootstrap import COMMAND_HANDLERS

    woken, wake = held()
    bus, store, _, _ = bootstrap_test_bus(
        command_handlers={**COMMAND_HANDLERS, commands.Allocate: allocate_then_fail}, wake=wake
    )
    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None))
    woken.clear()

    with pytest.raises(RuntimeError):
        bus.handle(commands.Allocate("o1", "LAMP", 10))

    assert woken == []
    assert [type(e) for e in store.logged_events()] == [events.BatchCreated]


def test_a_receipt_tells_the_caller_which_deliveries_its_commit_wrote():
    bus, store, _, _ = bootstrap_test_bus()
    receipt = Receipt("req-1")

    bus.handle(commands.CreateBatch("b1", "LAMP", 100, None), "req-1", receipt=receipt)

    assert [(d.id, d.handler) for d in receipt.deliveries] == [
        (d.id, d.handler) for d in store.deliveries.values()
    ]
    assert [d.handler for d in receipt.deliveries] == ["redis.append_to_event_stream"]


# --- groups ----------------------------------------------------------------------------------


def test_a_race_lost_inside_a_shared_transaction_gives_it_up_and_runs_each_alone():
    runs = []

    def add_spare_batch(event, uow):  # a database effect, in the group's transaction
        runs.append("spare")
        with uow:
            uow.products.get(event.sku).add_batch(f"spare-{runs.count('spare')}", 1, None)
            uow.commit()

    def loses_once(event):
        runs.append("race")
        if runs.count("race") == 1:
            raise TransactionConflict("deadlock detected")

    bus, store, _, _ = bootstrap_test_bus(
        event_handlers={events.OutOfStock: [add_spare_batch, loses_once]},
        groups=[GroupSpec((add_spare_batch, loses_once))],
    )
    out_of_stock(bus)

    assert runs == ["spare", "race", "spare", "race"]  # together, then each alone
    # The first effect was undone with its transaction (its locks went at once): it is there once.
    assert [b.reference for b in store.products["LAMP"].batches] == ["LAMP-1", "spare-2"]
    assert [(d.status, d.attempts) for d in store.deliveries.values()] == [(DONE, 1), (DONE, 1)]


def test_a_group_runs_its_deliveries_in_sku_order():
    seen = []

    def note(event):
        seen.append(event.sku)

    _, wake = held()
    wiring, _, _, _ = bootstrap_test_runner(
        event_handlers={events.OutOfStock: [note]}, wake=wake, groups=[GroupSpec((note,))]
    )
    for sku in ("ZEBRA", "APPLE", "MANGO"):
        out_of_stock(wiring.bus, sku)

    wiring.runner.run_due()

    assert seen == ["APPLE", "MANGO", "ZEBRA"]


class Together:
    """A set-based group: the handlers' calls are collected inside the block and applied
    when it exits (`fail_on_exit`: the set as a whole fails, as a lost connection would)."""

    def __init__(self):
        self.collecting, self.applied, self.fail_on_exit = None, [], False

    @contextlib.contextmanager
    def __call__(self):
        self.collecting = []
        try:
            yield
            if self.fail_on_exit:
                raise RuntimeError("the set failed")
            self.applied.append(sorted(self.collecting))
        finally:
            self.collecting = None

    def handler(self, event):
        if self.collecting is None:
            self.applied.append([event.sku])  # alone
        else:
            self.collecting.append(event.sku)


def test_a_set_based_group_applies_the_whole_set_at_once():
    together = Together()
    _, wake = held()
    wiring, store, _, _ = bootstrap_test_runner(
        event_handlers={events.OutOfStock: [together.handler]},
        wake=wake,
        groups=[GroupSpec((together.handler,), lambda deps: together)],
    )
    for sku in ("A", "B", "C"):
        out_of_stock(wiring.bus, sku)

    wiring.runner.run_due()

    assert together.applied == [["A", "B", "C"]]
    assert {d.status for d in store.deliveries.values()} == {DONE}


def test_a_set_that_fails_as_a_whole_runs_each_alone_and_the_culprit_fails_alone():
    together = Together()
    together.fail_on_exit = True

    def culprit_or_handler(event):
        if event.sku == "B" and together.collecting is None:
            raise RuntimeError("B is broken")
        together.handler(event)

    _, wake = held()
    wiring, store, _, _ = bootstrap_test_runner(
        event_handlers={events.OutOfStock: [culprit_or_handler]},
        wake=wake,
        groups=[GroupSpec((culprit_or_handler,), lambda deps: together)],
    )
    for sku in ("A", "B", "C"):
        out_of_stock(wiring.bus, sku)

    wiring.runner.run_due()

    assert together.applied == [["A"], ["C"]]
    outcome = {
        store.events[d.event_id].payload["sku"]: (d.status, bool(d.last_error))
        for d in store.deliveries.values()
    }
    assert outcome == {"A": (DONE, False), "B": (PENDING, True), "C": (DONE, False)}


def test_the_runner_says_which_deliveries_it_made_done_after_each_commit():
    told = []

    def fail(event):
        raise RuntimeError("mail server down")

    def note(event):
        pass

    bus, _, _, _ = bootstrap_test_bus(
        event_handlers={events.OutOfStock: [note, fail]}, on_delivered=told.append
    )
    bus.handle(commands.CreateBatch("b1", "LAMP", 5, None))

    bus.handle(commands.Allocate("o1", "LAMP", 10), correlation_id="req-1")

    assert [[(d.handler, d.correlation_id) for d in done] for done in told] == [
        [(handler_name(note), "req-1")]
    ]
