"""OTLP export across real processes: a router, a worker and a frontend with
``OTEL_TRACES_EXPORTER=otlp`` send their spans over OTLP/HTTP (protobuf) to a collector played
by the test, which decodes them; one chain is one trace with every parent right."""

from __future__ import annotations

import gzip
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .procs import QUEUE_TYPE, Harness, Proc, eventually
from .test_e2e_spans import FRONTEND, chain

pytestmark = pytest.mark.infra


class Collector:
    """An OTLP/HTTP trace receiver on 127.0.0.1: ``POST /v1/traces``."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.requests = 0
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.headers.get("Content-Type") == "application/x-protobuf"
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        self.requests += 1
        for resource in export.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append({
                        "name": span.name, "process": attrs.get("service.name"),
                        "kind": span.kind, "scope": scope.scope.name,
                        "start": span.start_time_unix_nano,
                        "context": {"trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex()},
                        "parent_id": span.parent_span_id.hex() or None,
                        "attributes": {a.key: a.value for a in span.attributes}})
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    found = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", found.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}"
    try:
        yield found
    finally:
        await runner.cleanup()


async def test_spans_reach_an_otlp_collector_as_one_trace_per_chain(
        ops: Harness, collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    h = ops
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)  # the default: HTTP
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # export within 0.2 s
    monkeypatch.setenv("OTEL_SERVICE_NAME", "router")
    await h.router("greeter")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "worker")
    await h.worker("examples.tutorial:greeter", "examples.tutorial:ask_name")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "frontend")
    front = await Proc.spawn("frontend", [sys.executable, "-c", FRONTEND, h.amqp_url, h.ns,
                                          QUEUE_TYPE])
    h.procs.append(front)
    await eventually(lambda: front.output().count("NOTICES ") == 2, 60, "two conversations")
    ns = h.ns
    step, reply_send = f"process {ns}.replies", f"send {ns}.x.replies"
    # "hi": greeter opens ask_name, which asks.
    expected = [f"process {ns}.ingress", f"send {ns}.service.greeter", "process greeter",
                reply_send, step, f"send {ns}.service.ask_name", "process ask_name",
                reply_send, step, "send "]

    def roots() -> list[dict[str, Any]]:
        return [s for s in collector.spans if s["process"] == "frontend"]

    def complete() -> bool:
        return len(roots()) == 2 and all(
            sum(s["context"]["trace_id"] == r["context"]["trace_id"] for s in collector.spans)
            >= len(expected) + 1 for r in roots())

    await eventually(complete, 30, "every span at the collector")
    first = min(roots(), key=lambda s: s["start"])  # "hi"
    trace = [s for s in collector.spans
             if s["context"]["trace_id"] == first["context"]["trace_id"]]
    assert first["name"] == f"send {ns}.x.ingress" and first["parent_id"] is None
    path = chain(trace, first, expected)
    assert [s["process"] for s in path] == [
        "frontend", "router", "router", "worker", "worker", "router", "router", "worker",
        "worker", "router", "router"]
    ids = {s["context"]["span_id"] for s in trace}
    assert all(s["parent_id"] in ids for s in trace if s is not first)
    assert {s["scope"] for s in trace} == {"cloudbunch"}
    handler = path[3]["attributes"]
    assert handler["cloudbunch.session"].string_value == "s1"
    assert handler["messaging.system"].string_value == "rabbitmq"
    assert path[1]["kind"] == path[3]["kind"] == 5  # SPAN_KIND_CONSUMER
    assert path[2]["kind"] == path[4]["kind"] == 4  # SPAN_KIND_PRODUCER
    assert collector.requests >= 3  # one process's batch each, at least
