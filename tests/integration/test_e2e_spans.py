"""OpenTelemetry traces across real processes (router, worker, frontend): each chain is one
trace, and every span has the right parent (frontend send -> router step -> dispatch ->
worker handler -> reply -> router step -> ... -> notice)."""

from __future__ import annotations

import json
import sys
from typing import Any

import aio_pika
import pytest

from .procs import QUEUE_TYPE, Harness, Proc, eventually, pack

pytestmark = pytest.mark.infra

FRONTEND = """
import asyncio, json, sys
from worker_sdk import AmqpBroker, Client

async def main(url, ns):
    broker = AmqpBroker(url, sys.argv[3], name="frontend")
    await broker.connect()
    async with Client(broker, ns) as client:
        for text in ("hi", "ada"):
            notices = await client.conversation("s1", text, timeout=30, settle=1.0)
            print("NOTICES " + json.dumps([[n.in_reply_to, n.type, n.payload]
                                           for n in notices]), flush=True)
    await broker.close()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def spans_of(proc: Proc) -> list[dict[str, Any]]:
    """The spans a process wrote (the console exporter: one JSON object a line)."""
    found = []
    for line in proc.output().splitlines():
        if line.startswith("{") and '"context"' in line:
            span = json.loads(line)
            span["process"] = proc.name
            found.append(span)
    return found


def chain(spans: list[dict[str, Any]], root: dict[str, Any],
          names: list[str]) -> list[dict[str, Any]]:
    """Follow ``names`` (name prefixes) down the tree from ``root``, one child each time."""
    path = [root]
    for name in names:
        parent = path[-1]["context"]["span_id"]
        children = [s for s in spans if s["parent_id"] == parent and s["name"].startswith(name)]
        assert len(children) == 1, (name, path[-1]["name"], children)
        path.append(children[0])
    return path


async def test_one_trace_per_chain_across_processes(
        e2e: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    h = e2e
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "cloudbunch-test")
    router = await h.router("greeter")
    worker = await h.worker("examples.tutorial:greeter", "examples.tutorial:ask_name")
    front = await Proc.spawn("frontend", [sys.executable, "-c", FRONTEND, h.amqp_url, h.ns,
                                          QUEUE_TYPE])
    h.procs.append(front)
    await eventually(lambda: front.output().count("NOTICES ") == 2, 60, "two conversations")
    assert "Nice to meet you, Ada!" in front.output(), front.output()
    ns = h.ns
    step, reply_send = f"process {ns}.replies", f"send {ns}.x.replies"
    # "hi": greeter opens ask_name, which asks; "ada": ask_name closes, greeter replies.
    expected = {
        "hi": [f"process {ns}.ingress", f"send {ns}.service.greeter", "process greeter",
               reply_send, step, f"send {ns}.service.ask_name", "process ask_name",
               reply_send, step, "send "],
        "ada": [f"process {ns}.ingress", f"send {ns}.service.ask_name", "process ask_name",
                reply_send, step, f"send {ns}.service.greeter", "process greeter",
                reply_send, step, "send "],
    }

    def complete() -> bool:
        spans = spans_of(front) + spans_of(router) + spans_of(worker)
        roots = [s for s in spans if s["process"] == "frontend"]
        return len(roots) == 2 and all(
            sum(s["context"]["trace_id"] == r["context"]["trace_id"] for s in spans)
            >= len(expected["hi"]) + 1 for r in roots)

    await eventually(complete, 30, "every span written")
    spans = spans_of(front) + spans_of(router) + spans_of(worker)
    roots = sorted((s for s in spans if s["process"] == "frontend"),
                   key=lambda s: s["start_time"])
    assert len({r["context"]["trace_id"] for r in roots}) == 2
    for root, text in zip(roots, ("hi", "ada"), strict=True):
        assert root["name"] == f"send {ns}.x.ingress" and root["parent_id"] is None
        assert root["kind"] == "SpanKind.PRODUCER"
        trace = [s for s in spans if s["context"]["trace_id"] == root["context"]["trace_id"]]
        path = chain(trace, root, expected[text])
        assert [s["process"] for s in path] == [
            "frontend", "router0", "router0", "worker1", "worker1", "router0", "router0",
            "worker1", "worker1", "router0", "router0"], text
        # Every span of the trace hangs from another span of it: one tree.
        ids = {s["context"]["span_id"] for s in trace}
        assert all(s["parent_id"] in ids for s in trace if s is not root)
        handler, reply = path[3].get("attributes", {}), path[4].get("attributes", {})
        assert path[3]["kind"] == "SpanKind.CONSUMER"
        assert handler["messaging.system"] == "rabbitmq"
        assert handler["messaging.operation.type"] == "process"
        assert handler["cloudbunch.session"] == "s1"
        assert handler["cloudbunch.service"] == path[3]["name"].split()[1]
        assert isinstance(handler["cloudbunch.turn"], str)
        assert reply["cloudbunch.action"] == ("open" if text == "hi" else "close")
        assert path[-1]["attributes"]["messaging.destination.name"] != f"{ns}.replies"


CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


async def test_deadline_steps_have_spans_in_the_chain_trace(
        ops: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scanner's steps (a turn dispatched again after its deadline; an idle timer
    firing) get a span each, child of the chain's trace context like the ingress step's,
    and parent of the dispatch they publish."""
    h = ops
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    a = await h.service("A")
    router = await h.router("A", turn_timeout=1)
    front = await h.frontend()
    body = front.body("s1", "hi")
    await h.channel.default_exchange.publish(
        aio_pika.Message(pack(body), content_type="application/msgpack",
                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=body["id"],
                         headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}),
        routing_key=h.ingress, mandatory=True)
    first = await a.next()  # left unanswered: its deadline passes
    again = await a.next(timeout=10)
    assert (again["turn"], again["attempt"]) == (first["turn"], 2)
    await a.reply(again, "reply", output=["ok"], idle=0.3)
    idle = await a.next(timeout=10)
    assert idle["event"] == "idle"
    await a.reply(idle, "reply", output=["still there?"])
    assert [n["payload"] for n in await front.wait(body["id"], 2, timeout=10)] == [
        "ok", "still there?"]

    def span(name: str) -> dict[str, Any]:
        found = [s for s in spans_of(router) if s["name"] == name]
        assert len(found) == 1, (name, [s["name"] for s in spans_of(router)])
        return found[0]

    def child(parent: dict[str, Any]) -> dict[str, Any]:
        found = [s for s in spans_of(router)
                 if s["parent_id"] == parent["context"]["span_id"]]
        assert len(found) == 1, (parent["name"], found)
        return found[0]

    await eventually(lambda: sum(s["name"] == f"send {h.ns}.service.A"
                                 for s in spans_of(router)) == 3, 10, "the router's spans")
    ingress, redispatch, timer = (span(f"process {h.ns}.ingress"), span("redispatch"),
                                  span("idle timer"))
    for step in (ingress, redispatch, timer):
        assert step["context"]["trace_id"] == "0x" + CLIENT_TRACE
        assert step["parent_id"] == "0x" + CLIENT_SPAN
    for step, dispatch in ((redispatch, again), (timer, idle)):
        assert step["kind"] == "SpanKind.INTERNAL"
        attributes = step["attributes"]
        assert attributes["cloudbunch.session"] == "s1"
        assert attributes["cloudbunch.turn"] == dispatch["turn"]
        assert attributes["cloudbunch.attempt"] == dispatch["attempt"]
        assert attributes["cloudbunch.event"] == dispatch["event"]
        assert attributes["cloudbunch.service"] == "A"
        assert attributes["cloudbunch.depth"] == 0
        send = child(step)
        assert send["name"] == f"send {h.ns}.service.A"
        assert send["attributes"]["cloudbunch.turn"] == dispatch["turn"]
        # The dispatch names its send span as parent, for the worker's span.
        traceparent = a.headers[dispatch["turn"]]["traceparent"]  # of its last delivery
        assert traceparent == f"00-{CLIENT_TRACE}-{send['context']['span_id'][2:]}-01"
    assert timer["attributes"]["cloudbunch.timers_fired"] == 1
    assert "cloudbunch.timers_fired" not in redispatch["attributes"]
    # The deadline's step started before its publish, and ended after it was confirmed.
    assert redispatch["start_time"] <= child(redispatch)["start_time"]
    assert redispatch["end_time"] >= child(redispatch)["end_time"]
