"""W3C trace context on the wire (PROTOCOL.md, "Transport"): a client message's
``traceparent`` / ``tracestate`` reach every dispatch and notice of its chain, and the SDK
copies a dispatch's onto its reply."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from worker_sdk import AmqpBroker, Client, Context, Service, wire

from .procs import QUEUE_TYPE, Harness

pytestmark = pytest.mark.infra

TRACE = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
         "tracestate": "congo=t61rcWkgMzE"}
TRACE_2 = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


def text(headers: Any) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in (headers or {}).items()
            if k in wire.TRACE_HEADERS}


async def spy_on_replies(e2e: Harness) -> asyncio.Queue[dict[str, str]]:
    """A queue bound to NS.x.replies under the replies key gets a copy of every reply
    published through the exchange; return the queue of their trace headers."""
    queue_name = f"{e2e.ns}.spy"
    e2e.queues.add(queue_name)
    declared = await e2e.channel.declare_queue(queue_name, durable=False)
    exchange = await e2e.channel.get_exchange(f"{e2e.ns}.x.replies", ensure=True)
    await declared.bind(exchange, wire.REPLIES_KEY)
    got: asyncio.Queue[dict[str, str]] = asyncio.Queue()

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        got.put_nowait(text(message.headers))
        await message.ack()

    await declared.consume(on_reply)
    return got


@pytest.fixture
async def broker(e2e: Harness) -> AsyncIterator[AmqpBroker]:
    broker = AmqpBroker(e2e.amqp_url, QUEUE_TYPE, name="test-trace")
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


async def test_trace_headers_reach_dispatches_replies_and_notices(
        e2e: Harness, broker: AmqpBroker) -> None:
    a = await e2e.service("A")
    await e2e.router("A")
    replies = await spy_on_replies(e2e)
    child = Service("B")

    @child.on_start
    def start(ctx: Context) -> None:
        ctx.say("from B")
        ctx.close(ctx.trace)  # what the SDK saw, for the parent to show

    await child.serve(broker, e2e.ns, prefetch=4)
    e2e.queues.add(child.queue(e2e.ns))
    client = Client(broker, e2e.ns)
    async with client:
        notices = client.session_notices("s")
        first = await client.send("s", "hi", trace=TRACE)
        d = await a.next()
        assert text(a.headers[d["turn"]]) == TRACE
        await a.reply(d, "open", service="B", output=["opening"])
        r = await a.next()  # B's result, after the SDK answered B's start
        assert r["event"] == "result" and r["result"]["value"] == TRACE, r
        assert text(a.headers[r["turn"]]) == TRACE
        assert await asyncio.wait_for(replies.get(), 10) == TRACE  # B's reply
        await a.reply(r, "reply", output=["done"])
        got = [await asyncio.wait_for(anext(notices), 10) for _ in range(3)]
        assert [(n.payload, n.in_reply_to) for n in got] == [
            ("opening", first), ("from B", first), ("done", first)]
        assert [n.trace for n in got] == [TRACE] * 3

        # The next chain carries its own message's trace; one without a trace gets none.
        second = await client.send("s", "again", trace=TRACE_2)
        d = await a.next()
        assert text(a.headers[d["turn"]]) == TRACE_2
        await a.reply(d, "pass")
        (unhandled,) = [await asyncio.wait_for(anext(notices), 10)]
        assert (unhandled.type, unhandled.in_reply_to, unhandled.trace) == (
            "unhandled", second, TRACE_2)
        third = await client.send("s", "plain")
        d = await a.next()
        assert text(a.headers[d["turn"]]) == {}
        await a.reply(d, "reply", output=["ok"])
        plain = await asyncio.wait_for(anext(notices), 10)
        assert (plain.in_reply_to, plain.trace) == (third, None)
        await notices.aclose()
    await broker.cancel(child.queue(e2e.ns))
