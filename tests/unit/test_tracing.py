"""worker_sdk.tracing: off (and importing nothing) without OTEL_* variables; spans and W3C
headers when OTEL_TRACES_EXPORTER asks for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

OFF = """
import sys
from worker_sdk import tracing
parent = {"traceparent": "00-%s-%s-01" % ("1" * 32, "2" * 16)}
with tracing.start_span("process q", "consumer", parent,
                        tracing.messaging("process", "q")) as span:
    assert span is None
    assert tracing.inject({"traceparent": "x"}) == {"traceparent": "x"}
with tracing.deferred_span("redispatch") as deferred:
    assert deferred is None
    assert tracing.parent(parent) == parent
assert not tracing.enabled()
assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported OpenTelemetry"
print("off")
"""

ON = """
from worker_sdk import tracing
parent = {"traceparent": "00-%s-%s-01" % ("a" * 32, "b" * 16)}
with tracing.start_span("process q", "consumer", parent,
                        tracing.messaging("process", "q", session="s1", turn="t1")) as step:
    with tracing.start_span("send out", "producer", current=False) as pub:
        headers = tracing.inject({"traceparent": "old", "tracestate": "old=1"}, pub)
print("HEADERS " + headers["traceparent"])
"""


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    base["PYTHONPATH"] = str(REPO)
    done = subprocess.run([sys.executable, "-c", code], env={**base, **env}, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_without_otel_variables_nothing_is_created_or_imported() -> None:
    assert _run(OFF).strip() == "off"
    assert _run(OFF, OTEL_TRACES_EXPORTER="none", OTEL_SERVICE_NAME="x").strip() == "off"


def test_console_exporter_records_spans_with_parents_from_headers() -> None:
    out = _run(ON, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="unit")
    spans = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    by_name = {s["name"]: s for s in spans}
    step, pub = by_name["process q"], by_name["send out"]
    assert step["context"]["trace_id"] == "0x" + "a" * 32
    assert step["parent_id"] == "0x" + "b" * 16
    assert step["kind"] == "SpanKind.CONSUMER"
    assert step["attributes"]["messaging.system"] == "rabbitmq"
    assert step["attributes"]["cloudbunch.session"] == "s1"
    assert "cloudbunch.action" not in step["attributes"]
    assert pub["parent_id"] == step["context"]["span_id"]
    assert pub["resource"]["attributes"]["service.name"] == "unit"
    (line,) = [x for x in out.splitlines() if x.startswith("HEADERS ")]
    assert line.split()[1] == "00-{}-{}-01".format("a" * 32, pub["context"]["span_id"][2:])


DEFERRED = """
from worker_sdk import tracing
chain = {"traceparent": "00-%s-%s-01" % ("c" * 32, "d" * 16)}
with tracing.deferred_span("deadline", {"cloudbunch.session": "s1"}) as nothing:
    pass  # published nothing: no span
with tracing.deferred_span("deadline", {"cloudbunch.session": "s1"}) as step:
    for queue in ("q1", "q2"):
        with tracing.start_span("send " + queue, "producer", tracing.parent(chain),
                                current=False):
            pass
    step.update("redispatch", **{"cloudbunch.attempt": 2, "cloudbunch.turn": None})
try:
    with tracing.deferred_span("deadline") as failed:
        tracing.parent(chain)
        raise RuntimeError("lost")
except RuntimeError:
    pass
"""


def test_a_deferred_span_starts_with_its_first_publish_under_the_chain_context() -> None:
    out = _run(DEFERRED, OTEL_TRACES_EXPORTER="console")
    spans = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert sorted(s["name"] for s in spans) == ["deadline", "redispatch", "send q1", "send q2"]
    step = next(s for s in spans if s["name"] == "redispatch")
    assert step["context"]["trace_id"] == "0x" + "c" * 32
    assert step["parent_id"] == "0x" + "d" * 16
    assert step["kind"] == "SpanKind.INTERNAL"
    assert step["attributes"] == {"cloudbunch.session": "s1", "cloudbunch.attempt": 2}
    for send in (s for s in spans if s["name"].startswith("send")):
        assert send["parent_id"] == step["context"]["span_id"]
    failed = next(s for s in spans if s["name"] == "deadline")
    assert failed["status"]["status_code"] == "ERROR"
    assert failed["events"][0]["name"] == "exception"


OTLP = """
from worker_sdk import tracing
print("ENABLED", tracing.enabled())
"""


def test_otlp_speaks_http_protobuf_by_default_and_refuses_other_protocols() -> None:
    # The otel extra installs the OTLP/HTTP exporter: no other setting is needed.
    assert "ENABLED True" in _run(OTLP, OTEL_TRACES_EXPORTER="otlp")
    assert "ENABLED True" in _run(OTLP, OTEL_TRACES_EXPORTER="otlp",
                                  OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    assert "ENABLED False" in _run(OTLP, OTEL_TRACES_EXPORTER="otlp",
                                   OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="http/json")
