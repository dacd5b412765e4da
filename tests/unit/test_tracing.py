import json
import logging

from allocation.domain import commands
from allocation.tracing import JsonFormatter, TraceFilter, traced
from tests.unit.fakes import bootstrap_test_bus


def capture(logger_name):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    handler.addFilter(TraceFilter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    return records, lambda: logger.removeHandler(handler)


def test_log_lines_carry_the_chain_ids_as_json():
    records, done = capture("tests.tracing")
    with traced(correlation_id="c-1", causation_id="e-1", handling="Allocate", sku="LAMP"):
        logging.getLogger("tests.tracing").warning("hello %s", "world")
    logging.getLogger("tests.tracing").warning("outside")
    done()

    inside, outside = (json.loads(JsonFormatter().format(r)) for r in records)
    assert inside["message"] == "hello world"
    assert (inside["correlation_id"], inside["causation_id"], inside["sku"]) == (
        "c-1",
        "e-1",
        "LAMP",
    )
    assert inside["handling"] == "Allocate"
    assert outside["correlation_id"] == "-"


def test_the_bus_traces_the_commands_it_handles(caplog):
    bus, *_ = bootstrap_test_bus()
    records, done = capture("allocation.messagebus")
    caplog.set_level(logging.INFO, logger="allocation.messagebus")

    def logging_handler(cmd, uow):
        logging.getLogger("allocation.messagebus").info("inside the handler")

    bus.command_handlers[commands.Allocate] = logging_handler
    bus.handle(commands.Allocate("o1", "LAMP", 1), correlation_id="req-42")
    done()

    [record] = [r for r in records if r.getMessage() == "inside the handler"]
    assert (record.correlation_id, record.handling, record.sku) == ("req-42", "Allocate", "LAMP")
