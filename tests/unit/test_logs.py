"""--log-format json: one object a line, the message's key=value pairs as fields."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from router.probes import process_options
from worker_sdk.errors import ConfigError
from worker_sdk.logs import JsonFormatter, configure


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("router.app", logging.WARNING, __file__, 1, msg, args, info)


def test_fields_come_from_the_message() -> None:
    line = JsonFormatter().format(record(
        "event=dead_letter session=%s turn=%s service=%s detail=%r", "tg:42", "T1", "menu",
        "field 'v' is 2"))
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["level"] == "warning" and entry["logger"] == "router.app"
    assert entry["time"].endswith("Z")
    assert (entry["event"], entry["session"], entry["turn"], entry["service"]) == (
        "dead_letter", "tg:42", "T1", "menu")
    assert entry["detail"] == "field 'v' is 2"
    assert "trace_id" not in entry


def test_reserved_names_are_not_overwritten_and_tracebacks_stay_on_one_line() -> None:
    entry = json.loads(JsonFormatter().format(record("event=x level=evil", exc=True)))
    assert entry["level"] == "warning"
    assert "ValueError: boom" in entry["exception"]


def test_trace_ids_when_a_span_is_current() -> None:
    from opentelemetry import trace as api
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("s") as span:
        entry = json.loads(JsonFormatter().format(record("event=x")))
        context = span.get_span_context()
    assert entry["trace_id"] == f"{context.trace_id:032x}"
    assert entry["span_id"] == f"{context.span_id:016x}"
    assert api.get_current_span().get_span_context().is_valid is False


def test_option_and_variable() -> None:
    class Args:
        metrics_port = None
        log_format = None

    assert process_options(Args(), {"CLOUDBUNCH_LOG_FORMAT": "json"}).log_format == "json"
    assert process_options(Args(), {}).log_format == "text"
    assert process_options(Args(), {"CLOUDBUNCH_METRICS_PORT": "9464"}).metrics_port == 9464
    assert process_options(Args(), {"CLOUDBUNCH_METRICS_PORT": ""}).metrics_port is None
    with pytest.raises(ConfigError, match="CLOUDBUNCH_METRICS_PORT must be a port number"):
        process_options(Args(), {"CLOUDBUNCH_METRICS_PORT": "nine"})
    with pytest.raises(ConfigError, match="log format must be 'text' or 'json'"):
        process_options(Args(), {"CLOUDBUNCH_LOG_FORMAT": "xml"})


def test_configure_installs_one_json_handler(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure(logging.INFO, "json")
        configure(logging.INFO, "json")  # again: still one handler
        logging.getLogger("router.app").info("event=router_started namespace=%s", "cb")
        logging.getLogger("router.app").debug("event=hidden")
        lines = capsys.readouterr().err.splitlines()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert [json.loads(line)["namespace"] for line in lines] == ["cb"]
