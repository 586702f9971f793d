"""The Node.js services of ``examples/node`` (checkout and payment, written from the contract
alone) on the real RabbitMQ and Redis, with a real router and the other pizza services in
Python: the pizza conversation must read exactly as it does with the Python twins.

``examples/node`` must be installed first (``npm ci`` there; ``scripts/test`` does it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from router.partitions import partition_queues
from router.store import DEFAULT_REDIS_URL
from worker_sdk.quick_replies import plain_text

from . import transcript
from .procs import QUEUE_TYPE, REPO, Harness, Proc, child_env, eventually, pack, unpack

pytestmark = pytest.mark.infra

NODE_DIR = REPO / "examples" / "node"
PYTHON_SERVICES = ["pizza", "menu", "order", "address"]


@pytest.fixture
def redis_url() -> str:
    """One Redis server: this suite tests the Node service, not the store (the other
    end-to-end suites run on both)."""
    return os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)


def shown(notice: dict[str, Any]) -> str:
    """A notice as the reference transcript writes it."""
    if notice["type"] == "output":
        return f"output:{plain_text(notice['payload'])}"  # quick replies as "text [a] [b]"
    error = notice.get("error")
    return f"{notice['type']}:{error['code'] if error else ''}"


async def node_service(harness: Harness, *names: str, queue_type: str = QUEUE_TYPE,
                       wait: bool = True) -> Proc:
    """Start ``examples/node/main.js`` serving ``names`` in the harness's namespace."""
    if shutil.which("node") is None:
        pytest.fail("node is not installed: install Node.js 20 or newer")
    if not (NODE_DIR / "node_modules" / "amqplib").is_dir():
        pytest.fail("examples/node is not installed: run `npm ci` in examples/node "
                    "(scripts/test does)")
    queues = [f"{harness.ns}.service.{name}" for name in names]
    harness.queues.update(queues)
    before = {q: await harness.consumers(q) for q in queues}
    env = child_env(CLOUDBUNCH_NAMESPACE=harness.ns, CLOUDBUNCH_AMQP_URL=harness.amqp_url,
                    CLOUDBUNCH_QUEUE_TYPE=queue_type, CLOUDBUNCH_LOG_LEVEL="debug")
    proc = await Proc.spawn(f"node{len(harness.procs)}",
                            ["node", str(NODE_DIR / "main.js"), *names], env)
    harness.procs.append(proc)
    if wait:
        for queue in queues:
            await harness._wait_ready(proc, queue, before[queue] + 1)
    return proc


async def play(harness: Harness, session: str) -> list[str]:
    """Play the reference conversation through a raw frontend; return the transcript."""
    front = await harness.frontend()
    lines: list[str] = []
    for text, expected in transcript.rounds():
        msg_id = await front.send(session, text)
        notices = await front.wait(msg_id, len(expected), timeout=30)
        lines.append(f"> {text}")
        lines.extend(shown(n) for n in notices)
    await harness.idle(session, timeout=30)
    return lines


async def exchange_exists(harness: Harness) -> bool:
    channel = await harness._conn.channel()  # type: ignore[union-attr]
    try:
        await channel.get_exchange(f"{harness.ns}.x.replies", ensure=True)
    except aio_pika.exceptions.ChannelClosed:
        return False
    with contextlib.suppress(Exception):
        await channel.close()
    return True


async def test_pizza_flow_with_node_checkout_and_payment(e2e: Harness) -> None:
    await e2e.router("pizza")
    await e2e.worker(*(f"router.demo_flow:{name}" for name in PYTHON_SERVICES))
    node = await node_service(e2e, "checkout", "payment")
    assert await play(e2e, "tg:node") == transcript.lines()
    # Every dispatch the Node process got was answered and acknowledged.
    for name in ("checkout", "payment"):
        assert await e2e.message_count(f"{e2e.ns}.service.{name}") == 0
    # Replies went through NS.x.replies when the router declared it (contract 1.1), else
    # straight to NS.replies (version 1).
    said = (f"replies to exchange {e2e.ns}.x.replies" if await exchange_exists(e2e)
            else f"replies to queue {e2e.replies}")
    assert said in node.output()
    assert await node.stop() == 0


async def test_same_transcript_with_the_python_twins(e2e: Harness) -> None:
    """The reference itself, on the same harness: what the Node test compares against."""
    await e2e.router("pizza")
    await e2e.worker(*(f"router.demo_flow:{name}"
                       for name in [*PYTHON_SERVICES, "checkout", "payment"]))
    assert await play(e2e, "tg:python") == transcript.lines()


# ---------------------------------------------------------------------- the wire, raw


class Replies:
    """Stands in for the router: declares ``NS.replies`` and collects what arrives there."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        self.got.put_nowait(message)

    async def next(self, timeout: float = 10.0) -> AbstractIncomingMessage:
        return await asyncio.wait_for(self.got.get(), timeout)


async def replies_queue(harness: Harness, *, exchange: bool) -> Replies:
    """``NS.replies`` as the router declares it, and (``exchange``) ``NS.x.replies`` bound."""
    channel = await harness._conn.channel()  # type: ignore[union-attr]
    queue = await channel.declare_queue(harness.replies, durable=True,
                                        arguments={"x-queue-type": QUEUE_TYPE})
    if exchange:
        x = await channel.declare_exchange(f"{harness.ns}.x.replies",
                                           aio_pika.ExchangeType.DIRECT, durable=True)
        await queue.bind(x, "replies")
    replies = Replies()
    await queue.consume(replies.on_message)
    return replies


async def delete_exchange(harness: Harness) -> None:
    channel = await harness._conn.channel()  # type: ignore[union-attr]
    with contextlib.suppress(Exception):
        await channel.exchange_delete(f"{harness.ns}.x.replies")
    with contextlib.suppress(Exception):
        await channel.close()


def dispatch(session: str, turn: str, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "session": session, "turn": turn, "depth": 1, "attempt": 1,
            "state": None, **fields}


async def send_dispatch(harness: Harness, queue: str, body: dict[str, Any],
                        headers: dict[str, Any] | None = None) -> None:
    await harness.channel.default_exchange.publish(
        aio_pika.Message(pack(body), content_type="application/msgpack",
                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                         message_id=f"{body['turn']}.{body['attempt']}", headers=headers),
        routing_key=queue, mandatory=True)


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "default-exchange"])
async def test_reply_on_the_wire(e2e: Harness, exchange: bool) -> None:
    replies = await replies_queue(e2e, exchange=exchange)
    try:
        await node_service(e2e, "payment", queue_type="classic")
        queue = f"{e2e.ns}.service.payment"
        # Declared exactly as the contract says: the same declaration is accepted.
        channel = await e2e._conn.channel()  # type: ignore[union-attr]
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "classic"})
        await channel.close()

        trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                 "tracestate": "vendor=1"}
        start = dispatch("s1", "T" * 22, event="start", args={"total": 1290})
        await send_dispatch(e2e, queue, start, trace)
        got = await replies.next()
        assert got.exchange == (f"{e2e.ns}.x.replies" if exchange else "")
        assert got.routing_key == ("replies" if exchange else e2e.replies)
        assert got.content_type == "application/msgpack"
        assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert got.message_id
        assert {k: got.headers.get(k) for k in trace} == trace
        assert unpack(got.body) == {
            "v": 1, "session": "s1", "turn": "T" * 22, "action": "reply",
            "output": ["Please type your card number to pay $12.90."], "idle": 60,
            "state": {"total": 1290, "asked": "Please type your card number to pay $12.90."}}

        # A copy of a dispatch is answered again; `state` absent in a pass keeps it.
        message = dispatch("s1", "U" * 22, event="message", state={"total": 1290},
                           payload="help", bubbled=False)
        for _ in range(2):
            await send_dispatch(e2e, queue, message)
        for _ in range(2):
            body = unpack((await replies.next()).body)
            assert body == {"v": 1, "session": "s1", "turn": "U" * 22, "action": "pass"}

        # A declined card fails the frame; a good one closes with the turn as payment id.
        await send_dispatch(e2e, queue, {**message, "turn": "V" * 22,
                                         "payload": "4000 1234 5678 0000"})
        assert unpack((await replies.next()).body)["error"] == {
            "code": "card_declined", "message": "the bank refused the card ending in 0000."}
        await send_dispatch(e2e, queue, {**message, "turn": "W" * 22,
                                         "payload": "4242-4242-4242-4242"})
        body = unpack((await replies.next()).body)
        assert body["action"] == "close"
        assert body["result"] == {"payment_id": "pay-" + "W" * 22, "card": "4242",
                                  "total": 1290}
        assert body["output"] == ["Paid $12.90 with the card ending in 4242."]

        # A dispatch of another version is answered with fail, not left to the deadline.
        await send_dispatch(e2e, queue, {**message, "turn": "X" * 22, "v": 2})
        body = unpack((await replies.next()).body)
        assert (body["action"], body["error"]["code"]) == ("fail", "invalid_dispatch")
        async def drained() -> bool:
            return await e2e.message_count(queue) == 0

        await eventually(drained, 10, "every dispatch acknowledged")
    finally:
        await delete_exchange(e2e)


async def test_state_comes_back_exactly(e2e: Harness) -> None:
    """Values the service does not touch survive the round trip through JavaScript: big
    integers, binary, nested maps, floats, and a nil in the state."""
    replies = await replies_queue(e2e, exchange=False)
    await node_service(e2e, "checkout")
    queue = f"{e2e.ns}.service.checkout"
    state = {"description": "large margherita", "total": 1290, "street": "12 Baker Street",
             "step": "retry", "big": 2**62, "bin": b"\x00\xff", "f": 0.5, "none": None,
             "deep": [[[{"a": [1, 2, {"b": "c"}]}]]]}
    await send_dispatch(e2e, queue, dispatch("s1", "T" * 22, event="message", state=state,
                                             payload="retry"))
    body = unpack((await replies.next()).body)
    assert body["action"] == "open" and body["service"] == "payment"
    assert body["args"] == {"total": 1290}
    assert body["state"] == {**state, "step": "payment"}


async def test_sigterm_finishes_and_exits_0(e2e: Harness) -> None:
    await replies_queue(e2e, exchange=False)
    node = await node_service(e2e, "payment")
    assert await node.stop() == 0
    assert "stopped" in node.output()


@pytest.mark.disruptive
async def test_reconnects_after_the_connection_is_closed(e2e: Harness) -> None:
    """The broker closes the Node process's connection (only that one, by its name): it
    connects again and serves the flow."""
    await e2e.router("pizza")
    await e2e.worker(*(f"router.demo_flow:{name}" for name in PYTHON_SERVICES))
    node = await node_service(e2e, "checkout", "payment")
    listed = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
                            capture_output=True, text=True, check=True).stdout
    pids = [line.split()[0] for line in listed.splitlines()
            if f"cloudbunch-node {e2e.ns} " in line]
    assert len(pids) == 1, listed
    subprocess.run(["rabbitmqctl", "-q", "close_connection", pids[0], "test"], check=True)
    await eventually(lambda: "reconnecting" in node.output(), 20, "the Node process to notice")
    for name in ("checkout", "payment"):
        await e2e._wait_ready(node, f"{e2e.ns}.service.{name}", 1)
    assert await play(e2e, "tg:reconnect") == transcript.lines()


def test_unknown_service_name_is_one_line() -> None:
    if not (NODE_DIR / "node_modules").is_dir():
        pytest.fail("examples/node is not installed: run `npm ci` in examples/node")
    done = subprocess.run(["node", str(NODE_DIR / "main.js"), "menu"], capture_output=True,
                          text=True, timeout=30, env=child_env(), check=False)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "unknown service menu" in done.stderr


async def test_serves_again_after_its_queue_is_deleted(e2e: Harness) -> None:
    """The broker cancels the consumer of a deleted queue: the service connects again,
    declares its queue anew and answers (the same path as a lost connection)."""
    replies = await replies_queue(e2e, exchange=False)
    node = await node_service(e2e, "payment")
    queue = f"{e2e.ns}.service.payment"
    channel = await e2e._conn.channel()  # type: ignore[union-attr]
    await channel.queue_delete(queue)
    await channel.close()
    await eventually(lambda: "reconnecting" in node.output(), 20, "the Node process to notice")
    await e2e._wait_ready(node, queue, 1)
    await send_dispatch(e2e, queue, dispatch("s1", "T" * 22, event="start",
                                             args={"total": 100}))
    assert unpack((await replies.next()).body)["output"] == [
        "Please type your card number to pay $1.00."]


async def test_a_node_service_replies_to_the_partition_its_dispatch_names(e2e: Harness) -> None:
    """Routers with ``--partitions`` name the reply's partition in a dispatch's reply_to
    (docs/scaling.md): the Node service publishes there, and to the shared queue when that
    partition does not exist. The router only declares the queues here, then stops, so that
    the replies stay where the service put them."""
    router = await e2e.router("checkout", partitions=2)
    e2e.queues.update(q.name for q in partition_queues(e2e.ns, 2))
    await router.stop()
    await node_service(e2e, "checkout")
    queue = f"{e2e.ns}.service.checkout"
    for turn, reply_to, lands_in in (("t" * 22, "replies.1", f"{e2e.ns}.replies.1"),
                                     ("u" * 22, "replies.7", e2e.replies)):
        dispatch = {"v": 1, "session": "s", "turn": turn, "event": "start", "depth": 0,
                    "attempt": 1, "state": None}
        await e2e.channel.default_exchange.publish(
            aio_pika.Message(pack(dispatch), content_type="application/msgpack",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=turn, reply_to=reply_to),
            routing_key=queue, mandatory=True)
        await eventually(lambda q=lands_in: _has_messages(e2e, q), 15.0, f"a reply in {lands_in}")
    assert await e2e.message_count(f"{e2e.ns}.replies.0") == 0
    assert await e2e.message_count(f"{e2e.ns}.replies.1") == 1
    assert await e2e.message_count(e2e.replies) == 1


async def _has_messages(e2e: Harness, queue: str) -> bool:
    return await e2e.message_count(queue) > 0
