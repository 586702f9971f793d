"""docs/asyncapi.yaml: current, valid AsyncAPI 3.0, and every example message in it accepted
by the real code (router core and shell, service SDK, client) on the in-memory broker."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from examples.tutorial import ask_name, greeter
from router import asyncapi
from router.app import Router
from router.config import RouterConfig
from router.store import MemoryStore
from worker_sdk import wire
from worker_sdk.broker import Delivery, Outgoing
from worker_sdk.client import Client
from worker_sdk.memory import MemoryBroker
from worker_sdk.service import run_services

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "schemas" / "asyncapi-3.0.0.json"
NS = "cb"
DOC = yaml.safe_load(asyncapi.DOC.read_text(encoding="utf-8"))
SCHEMAS = DOC["components"]["schemas"]


def _examples(message: str) -> list[dict[str, Any]]:
    return DOC["components"]["messages"][message]["examples"]  # type: ignore[no-any-return]


def _ids(message: str) -> list[str]:
    return [e["name"] for e in _examples(message)]


async def _until(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    tool = Path(sys.executable).parent / "check-jsonschema"
    exe = str(tool) if tool.exists() else shutil.which("check-jsonschema")
    assert exe, "check-jsonschema is not installed: pip install -e '.[test]'"
    return subprocess.run([exe, "--schemafile", str(SCHEMA), str(path)], capture_output=True,
                          text=True)


def test_document_is_current() -> None:
    assert asyncapi.DOC.read_text(encoding="utf-8") == asyncapi.render(), \
        "docs/asyncapi.yaml is out of date: run python -m router.asyncapi"
    assert asyncapi.main(["--check"]) == 0


def test_document_is_valid_asyncapi(tmp_path: Path) -> None:
    proc = _check_jsonschema(asyncapi.DOC)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(asyncapi.DOC.read_text().replace("action: send", "action: publish", 1))
    assert _check_jsonschema(bad).returncode != 0


def test_every_wire_field_is_documented(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, cls in asyncapi.WIRE_CLASSES.items():
        props = SCHEMAS[name]["properties"]
        # trace travels in AMQP headers, not in the body
        assert {f for f in cls.__dataclass_fields__} - {"trace"} <= set(props), name
    monkeypatch.delitem(asyncapi.FIELDS["Notice"], "payload")
    with pytest.raises(SystemExit, match="does not document"):
        asyncapi.document()


@pytest.mark.parametrize("message", ["ClientMessage", "Dispatch", "Reply", "Notice"])
def test_examples_match_schema_and_wire_types(message: str) -> None:
    validator = jsonschema.Draft7Validator({**SCHEMAS[message], "components": DOC["components"]})
    for example in _examples(message):
        body = example["payload"]
        errors = [e.message for e in validator.iter_errors(body)]
        assert not errors, (example["name"], errors)
        decoded = wire.decode(wire.encode(body))
        parsed = asyncapi.WIRE_CLASSES[message].from_wire(decoded)  # type: ignore[attr-defined]
        assert parsed.session == body["session"]
    bad = dict(_examples(message)[0]["payload"], v=2)
    assert list(validator.iter_errors(bad))


class _Deployment:
    """Router (real core and shell) on the in-memory broker and store."""

    def __init__(self) -> None:
        self.broker = MemoryBroker()
        self.router = Router(RouterConfig(root="greeter", namespace=NS, turn_timeout=30),
                             self.broker, MemoryStore())
        self.dead = wire.queue_names(NS)["dead"]

    def bodies(self, queue: str) -> list[dict[str, Any]]:
        return [wire.decode(b) for b in self.broker.messages(queue)]

    def notices(self, queue: str, in_reply_to: str) -> list[dict[str, Any]]:
        return [n for n in self.bodies(queue) if n.get("in_reply_to") == in_reply_to]

    async def publish(self, queue: str, body: dict[str, Any], message_id: str) -> None:
        assert await self.broker.publish([Outgoing(queue, wire.encode(body), message_id)])


@pytest.fixture
async def deployment() -> AsyncIterator[_Deployment]:
    d = _Deployment()
    await d.broker.connect()
    await d.router.start()
    yield d
    await d.router.stop()
    await d.broker.close()


@pytest.mark.parametrize("name", _ids("ClientMessage"))
async def test_client_message_examples(deployment: _Deployment, name: str) -> None:
    (example,) = [e for e in _examples("ClientMessage") if e["name"] == name]
    body = example["payload"]
    stop = asyncio.Event()
    task = asyncio.create_task(run_services([greeter, ask_name], deployment.broker, NS, 4, stop))
    try:
        await deployment.broker.declare_own(body["reply_to"])
        await _until(lambda: deployment.broker._queues.get(f"{NS}.service.ask_name"),
                     "the services to serve")
        await deployment.publish(f"{NS}.ingress", body, body["id"])
        notices = await _until(lambda: deployment.notices(body["reply_to"], body["id"]),
                               f"a notice in reply to {body['id']}")
        for notice in notices:
            wire.Notice.from_wire(notice)
        assert not deployment.bodies(deployment.dead)
    finally:
        stop.set()
        await task


@pytest.mark.parametrize("name", _ids("Dispatch"))
async def test_dispatch_examples(name: str) -> None:
    (example,) = [e for e in _examples("Dispatch") if e["name"] == name]
    broker = MemoryBroker()
    await broker.connect()
    replies = wire.queue_names(NS)["replies"]
    await broker.declare(replies)  # as the router does
    await broker.bind(wire.exchange_names(NS)["replies"], wire.REPLIES_KEY, replies)
    stop = asyncio.Event()
    task = asyncio.create_task(run_services([greeter, ask_name], broker, NS, 4, stop))
    try:
        service = f"{NS}.service.{'ask_name' if example['payload']['depth'] else 'greeter'}"
        await _until(lambda: broker._queues.get(service), "the service to serve")
        assert await broker.publish([Outgoing(service, wire.encode(example["payload"]), "d1")])
        (body,) = await _until(lambda: broker.messages(replies), "a reply")
        reply = wire.Reply.from_wire(wire.decode(body))
        assert (reply.session, reply.turn) == (example["payload"]["session"], asyncapi.TURN)
    finally:
        stop.set()
        await task
        await broker.close()


EXPECTED_NOTICE = {"reply": "output", "close": "end", "fail": "error", "pass": "unhandled"}


@pytest.mark.parametrize("name", _ids("Reply"))
async def test_reply_examples(deployment: _Deployment, name: str) -> None:
    """The example answers a message turn of the root frame (turn and session filled in)."""
    (example,) = [e for e in _examples("Reply") if e["name"] == name]
    d = deployment
    started: list[dict[str, Any]] = []
    replies = wire.queue_names(NS)["replies"]

    def responder(answer: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
        async def on_dispatch(delivery: Delivery) -> None:
            dispatch = wire.decode(delivery.body)
            started.append(dispatch)
            body = answer(dispatch) | {"v": 1, "session": dispatch["session"],
                                       "turn": dispatch["turn"]}
            await d.publish(replies, body, dispatch["turn"] + ".r")
            await delivery.ack()
        return on_dispatch

    def root_answer(dispatch: dict[str, Any]) -> dict[str, Any]:
        return {"action": "reply"} if dispatch["event"] == "start" else dict(example["payload"])

    for service, answer in (("greeter", root_answer), ("ask_name", lambda _: {"action": "reply"})):
        queue = wire.service_queue(NS, service)
        await d.broker.declare(queue)
        await d.broker.consume(queue, responder(answer), prefetch=1)
    client_queue = f"{NS}.client.web"
    await d.broker.declare_own(client_queue)
    session = example["payload"]["session"]
    for msg_id, event in (("m-1", "start"), ("m-2", "message")):
        await d.publish(f"{NS}.ingress", {"v": 1, "type": "message", "session": session,
                                          "id": msg_id, "reply_to": client_queue,
                                          "payload": "hi"}, msg_id)
        await _until(lambda e=event: any(x["event"] == e for x in started),  # type: ignore[misc]
                     f"the dispatch for {msg_id}")
    action = example["payload"]["action"]
    if action in ("open", "replace"):
        await _until(lambda: any(x["depth"] == (1 if action == "open" else 0)
                                 and x["event"] == "start" and x.get("args") is not None
                                 for x in started), "the child's start")
    else:
        kinds = await _until(lambda: [n["type"] for n in d.notices(client_queue, "m-2")],
                             "the notices of the chain")
        assert EXPECTED_NOTICE[action] in kinds
        outputs = [n["payload"] for n in d.notices(client_queue, "m-2") if n["type"] == "output"]
        assert outputs == example["payload"].get("output", [])
    assert not d.bodies(d.dead)


@pytest.mark.parametrize("name", _ids("Notice"))
async def test_notice_examples(name: str) -> None:
    (example,) = [e for e in _examples("Notice") if e["name"] == name]
    broker = MemoryBroker()
    await broker.connect()
    async with Client(broker, NS, reply_queue=f"{NS}.client.web") as client:
        notices = client.notices()
        assert await broker.publish([Outgoing(client.reply_queue,
                                              wire.encode(example["payload"]), "n")])
        notice = await asyncio.wait_for(notices.__anext__(), 5)
        assert notice == wire.Notice.from_wire(example["payload"])
    await broker.close()


async def test_every_header_the_router_sets_is_documented(deployment: _Deployment) -> None:
    """The headers of a real dispatch and notice (a traced chain) are the ones the document
    declares for them: a header added to the code without the document fails here."""
    d = deployment

    def declared(schema: str) -> set[str]:
        found: set[str] = set()
        node = SCHEMAS[schema]
        for part in [node, *node.get("allOf", [])]:
            if "$ref" in part:
                found |= declared(part["$ref"].rsplit("/", 1)[1])
            found |= set(part.get("properties", {}))
        return found

    def headers_of(message: str) -> set[str]:
        ref = DOC["components"]["messages"][message]["headers"]["$ref"]
        return declared(ref.rsplit("/", 1)[1])

    service = wire.service_queue(NS, "greeter")
    await d.broker.declare(service)
    client_queue = f"{NS}.client.web"
    await d.broker.declare_own(client_queue)
    body = {"v": 1, "type": "message", "session": "s-h", "id": "m-h", "reply_to": client_queue,
            "payload": "hi"}
    assert await d.broker.publish([Outgoing(f"{NS}.ingress", wire.encode(body), "m-h",
                                            headers=dict(asyncapi.TRACE))])
    (dispatch_headers,) = await _until(lambda: d.broker.headers(service), "the dispatch")
    assert set(dispatch_headers) == headers_of("Dispatch") - {"tracestate"}, dispatch_headers
    dispatch = wire.decode(d.broker.messages(service)[0])
    reply = {"v": 1, "session": "s-h", "turn": dispatch["turn"], "action": "reply",
             "output": ["hello"]}
    await d.publish(wire.queue_names(NS)["replies"], reply, "r-h")
    (notice_headers,) = await _until(lambda: d.broker.headers(client_queue), "the notice")
    assert set(notice_headers) <= headers_of("Notice"), notice_headers
    assert notice_headers["traceparent"] == asyncapi.TRACE["traceparent"]
