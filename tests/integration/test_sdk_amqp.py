"""Service and Client on the real RabbitMQ, with a hand-written router standing in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from worker_sdk import AmqpBroker, Client, Context, Service, wire
from worker_sdk.broker import Delivery, Outgoing
from worker_sdk.errors import NoRouter
from worker_sdk.service import run_services

pytestmark = pytest.mark.infra


@pytest.fixture
async def broker(amqp_url: str, namespace: str) -> AsyncIterator[AmqpBroker]:
    broker = AmqpBroker(amqp_url, connect_timeout=10, name=f"test {namespace}")
    await broker.connect()
    try:
        yield broker
    finally:
        await _delete_namespace(broker, namespace)
        await broker.close()


async def _delete_namespace(broker: AmqpBroker, namespace: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", "list_queues", "name", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    stdout, _ = await proc.communicate()
    for name in stdout.decode().split():
        if name.startswith(namespace + "."):
            await broker.delete(name)


async def _collect(queue: asyncio.Queue[Any], n: int, timeout: float = 10) -> list[Any]:
    return [await asyncio.wait_for(queue.get(), timeout) for _ in range(n)]


async def test_service_answers_a_dispatch_on_replies(broker: AmqpBroker,
                                                     namespace: str) -> None:
    menu = Service("menu")

    @menu.on_start
    async def start(ctx: Context) -> None:
        ctx.reply("Hi! pizza or drinks?", state={"step": 1})

    @menu.on_message
    def message(ctx: Context) -> None:
        if ctx.payload == "boom":
            raise RuntimeError("kaput")
        ctx.open("order", {"item": ctx.payload})

    stop = asyncio.Event()
    runner = asyncio.create_task(run_services([menu], broker, namespace, 8, stop))
    replies_q = f"{namespace}.replies"
    got: asyncio.Queue[tuple[wire.Reply, str | None]] = asyncio.Queue()

    async def on_reply(delivery: Delivery) -> None:
        got.put_nowait((wire.Reply.from_wire(wire.decode(delivery.body)), delivery.message_id))
        await delivery.ack()

    for _ in range(100):
        if await broker.consumer_count(f"{namespace}.service.menu") == 1:
            break
        await asyncio.sleep(0.05)
    await broker.consume(replies_q, on_reply, prefetch=10)
    service_q = f"{namespace}.service.menu"
    dispatches = [
        wire.Dispatch(session="tg:1", turn="T" * 16, event="start", depth=0),
        wire.Dispatch(session="tg:1", turn="U" * 16, event="message", depth=0, attempt=2,
                      payload="pizza", state={"step": 1}),
        wire.Dispatch(session="tg:1", turn="V" * 16, event="message", depth=0,
                      payload="boom"),
    ]
    assert await broker.publish(
        [Outgoing(service_q, wire.encode(d.to_wire()), f"d{i}") for i, d in enumerate(dispatches)]
        + [Outgoing(service_q, b"\x92\x01", "bad")]) == [True] * 4
    replies = {r.turn: (r, mid) for r, mid in await _collect(got, 3)}
    start_reply, start_id = replies["T" * 16]
    assert start_id == f"{'T' * 16}.1.r"
    assert (start_reply.action, start_reply.output, start_reply.state) == (
        "reply", ["Hi! pizza or drinks?"], {"step": 1})
    open_reply, open_id = replies["U" * 16]
    assert open_id == f"{'U' * 16}.2.r"
    assert (open_reply.action, open_reply.service, open_reply.args) == (
        "open", "order", {"item": "pizza"})
    assert open_reply.state is wire.ABSENT
    fail_reply, _ = replies["V" * 16]
    assert fail_reply.action == "fail"
    assert fail_reply.error == wire.ErrorInfo("exception", "RuntimeError: kaput")
    # Every dispatch was acked after its reply (the bad one too): nothing left or unacked.
    for _ in range(100):
        if await broker.message_count(service_q) == 0:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(runner, 15)
    assert await broker.message_count(service_q) == 0
    assert await broker.consumer_count(service_q) == 0
    await broker.cancel(replies_q)


async def test_a_copy_of_a_dispatch_is_answered_too(broker: AmqpBroker, namespace: str) -> None:
    svc = Service("echo")
    svc.on_message(lambda ctx: ctx.reply(ctx.payload))
    await svc.serve(broker, namespace, prefetch=4)
    got: asyncio.Queue[wire.Reply] = asyncio.Queue()

    async def on_reply(delivery: Delivery) -> None:
        got.put_nowait(wire.Reply.from_wire(wire.decode(delivery.body)))
        await delivery.ack()

    await broker.consume(f"{namespace}.replies", on_reply, prefetch=10)
    body = wire.encode(wire.Dispatch(session="s", turn="W" * 16, event="message", depth=0,
                                     payload="hi").to_wire())
    q = svc.queue(namespace)
    await broker.publish([Outgoing(q, body, "same"), Outgoing(q, body, "same")])
    replies = await _collect(got, 2)
    assert [r.output for r in replies] == [["hi"], ["hi"]]
    await broker.cancel(q)
    await broker.cancel(f"{namespace}.replies")


class FakeRouter:
    """Consumes NS.ingress and answers each message with notices, sometimes twice."""

    def __init__(self, broker: AmqpBroker, namespace: str) -> None:
        self.broker = broker
        self.ingress = f"{namespace}.ingress"
        self.received: list[wire.ClientMessage] = []

    async def start(self) -> None:
        await self.broker.declare(self.ingress)
        await self.broker.consume(self.ingress, self.on_message, prefetch=10)

    async def on_message(self, delivery: Delivery) -> None:
        msg = wire.ClientMessage.from_wire(wire.decode(delivery.body))
        assert delivery.message_id == msg.id
        self.received.append(msg)
        if msg.type == "end":
            notices = [wire.Notice(msg.session, f"{msg.id}/end", msg.id, "end")]
        elif msg.payload == "help":
            notices = [wire.Notice(msg.session, f"{msg.id}/u", msg.id, "unhandled",
                                   payload=msg.payload)]
        else:
            notices = [wire.Notice(msg.session, f"{msg.id}/{i}", msg.id, "output",
                                   payload=f"{msg.payload} #{i}") for i in range(2)]
            notices.append(notices[0])  # a copy, as after a crash: the client dedups it
        await self.broker.publish([Outgoing(msg.reply_to, wire.encode(n.to_wire()), n.id)
                                   for n in notices])
        await delivery.ack()


async def test_client_round_trip(broker: AmqpBroker, amqp_url: str, namespace: str) -> None:
    router = FakeRouter(broker, namespace)
    client_broker = AmqpBroker(amqp_url, connect_timeout=10)
    await client_broker.connect()
    client = Client(client_broker, namespace, reply_queue=f"{namespace}.frontend-1")
    try:
        await client.start()
        with pytest.raises(NoRouter, match=f"no router has declared {namespace}.ingress yet"):
            await client.send("tg:1", "too early")
        assert client.last_seq("tg:1") == 0  # a message that went nowhere took no number
        await router.start()

        notices = await client.conversation("tg:1", "pizza", timeout=10)
        assert [(n.type, n.payload) for n in notices] == [("output", "pizza #0"),
                                                         ("output", "pizza #1")]
        unhandled = await client.conversation("tg:1", "help", meta={"lang": "it"})
        assert [(n.type, n.payload) for n in unhandled] == [("unhandled", "help")]

        session_iter = client.session_notices("tg:2")
        all_iter = client.notices()
        sent = await client.send("tg:2", "drinks", entry="bar")
        ended = await client.end("tg:2")
        firsts = [await asyncio.wait_for(anext(session_iter), 10) for _ in range(3)]
        assert [(n.type, n.in_reply_to) for n in firsts] == [
            ("output", sent), ("output", sent), ("end", ended)]
        everything = [await asyncio.wait_for(anext(all_iter), 10) for _ in range(3)]
        assert [n.id for n in everything] == [n.id for n in firsts]

        by_id = {m.id: m for m in router.received}
        assert [m.seq for m in router.received if m.session == "tg:1"] == [1, 2]
        assert by_id[sent].seq == 1 and by_id[sent].entry == "bar"
        assert by_id[ended].type == "end" and by_id[ended].reply_to == client.reply_queue
        assert router.received[1].meta == {"lang": "it"}
        assert len({m.id for m in router.received}) == len(router.received)
        assert all(len(m.id) >= 16 for m in router.received)
        await session_iter.aclose()
        await all_iter.aclose()
    finally:
        await client.close()
        await client_broker.close()
    # A named reply queue survives the client (notices wait for its restart).
    assert await broker.queue_exists(f"{namespace}.frontend-1")


async def test_generated_reply_queue_is_deleted_on_close(amqp_url: str, namespace: str,
                                                         broker: AmqpBroker) -> None:
    from worker_sdk import Settings

    client = await Client.connect(Settings(amqp_url=amqp_url, namespace=namespace,
                                           queue_type="quorum"))
    queue = client.reply_queue
    assert queue.startswith(f"{namespace}.client.")
    assert await broker.queue_exists(queue)
    await client.close()
    assert not await broker.queue_exists(queue)


async def test_a_crashed_clients_generated_reply_queue_expires(
        amqp_url: str, namespace: str, broker: AmqpBroker) -> None:
    from worker_sdk import Settings

    client = await Client.connect(Settings(amqp_url=amqp_url, namespace=namespace),
                                  reply_queue_expires=1.0)
    queue = client.reply_queue
    assert await broker.queue_exists(queue)
    await client.broker.close()  # a crash: the connection goes, nobody deletes the queue
    # A passive declare (queue_exists) renews the lease too: look less often than it lasts.
    deadline = asyncio.get_running_loop().time() + 60
    while await broker.queue_exists(queue):
        assert asyncio.get_running_loop().time() < deadline, f"{queue} never expired"
        await asyncio.sleep(3.0)


async def test_service_run_exits_cleanly_on_sigterm(amqp_url: str, namespace: str,
                                                    broker: AmqpBroker, tmp_path: Path) -> None:
    script = tmp_path / "svc.py"
    script.write_text(textwrap.dedent("""
        from worker_sdk import Service
        svc = Service("sig")
        svc.on_message(lambda ctx: ctx.reply("ok"))
        svc.run()
    """))
    env = dict(os.environ, CLOUDBUNCH_AMQP_URL=amqp_url, CLOUDBUNCH_NAMESPACE=namespace,
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        for _ in range(200):
            if await broker.consumer_count(f"{namespace}.service.sig") == 1:
                break
            await asyncio.sleep(0.05)
        assert await broker.consumer_count(f"{namespace}.service.sig") == 1
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
        assert code == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.communicate()


def test_service_run_without_broker_prints_one_line(tmp_path: Path) -> None:
    script = tmp_path / "svc.py"
    script.write_text("import sys\n"
                      "from worker_sdk import Service, Settings\n"
                      "from worker_sdk.service import run_main\n"
                      "settings = Settings(amqp_url='amqp://guest:pw@127.0.0.1:1/')\n"
                      "sys.exit(run_main([Service('x')], settings, connect_timeout=1))\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cloudbunch worker:")]
    assert lines == [lines[0]] and "RabbitMQ is not reachable (amqp://guest:***@127.0.0.1:1/"\
        in lines[0]
    assert "Traceback" not in proc.stderr
