"""The baseline: plain aio-pika request/reply between two processes, no router.

The requester (this process) publishes a dispatch-sized request, persistent and confirmed, to
a durable queue of the same type as a service queue; the responder (a subprocess,
``python -m bench.direct``) decodes it, publishes a reply-sized answer to the requester's
durable reply queue (of that type too, like a Client's generated one), persistent and
confirmed, and only then acknowledges: the same publish-then-ack a CloudBunch worker does.
So each round trip is two persistent, confirmed publishes, against four for a routed turn.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import signal
from typing import Any

import aio_pika
import msgpack
from aio_pika.abc import AbstractIncomingMessage

from .procs import run_loop
from .services import PAYLOAD, state

log = logging.getLogger(__name__)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def request_body(session: str, turn: str, n: int) -> bytes:
    """The shape and size of a routed dispatch of a ``message`` event at depth 0."""
    return pack({"v": 1, "session": session, "turn": turn, "event": "message", "depth": 0,
                 "state": state(n), "payload": PAYLOAD, "bubbled": False, "attempt": 1})


def answer_body(request: dict[str, Any]) -> bytes:
    """The shape and size of the routed service's reply to that dispatch."""
    n = request["state"]["n"] + 1
    return pack({"v": 1, "session": request["session"], "turn": request["turn"],
                 "action": "reply", "state": state(n), "output": [request["payload"]]})


def server_of(connection: aio_pika.abc.AbstractConnection) -> dict[str, str]:
    """The broker's product and version, as it announced them on ``connection``."""
    props = connection.transport.connection.server_properties  # type: ignore[union-attr]
    return {k: _text(props.get(k)) for k in ("product", "version")}


async def rabbitmq_server(amqp_url: str) -> dict[str, str]:
    """The broker's product and version (a connection of its own, closed at once)."""
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        return server_of(connection)


class Requester:
    """The bench side of the baseline: publishes requests and matches the answers."""

    def __init__(self, amqp_url: str, request_queue: str, reply_queue: str,
                 queue_type: str) -> None:
        self.amqp_url = amqp_url
        self.request_queue = request_queue
        self.reply_queue = reply_queue
        self.queue_type = queue_type
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._early: set[str] = set()
        self._counter = 0
        self.server: dict[str, str] = {}

    async def open(self) -> None:
        self._conn = await aio_pika.connect(self.amqp_url, timeout=10,
                                            client_properties={"connection_name": "bench"})
        self.server = server_of(self._conn)
        self._channel = await self._conn.channel(publisher_confirms=True)
        setup = await self._conn.channel()
        # The same declarations as the routed path: the request queue like a service queue,
        # the reply queue like the one a frontend's Client generates (durable, of the queue
        # type in use: quorum by default), so that a hop costs the broker the same in both.
        kind = {"x-queue-type": self.queue_type}
        await setup.declare_queue(self.request_queue, durable=True, arguments=kind)
        await setup.close()
        consume = await self._conn.channel()
        await consume.set_qos(prefetch_count=256)
        replies = await consume.declare_queue(self.reply_queue, durable=True, arguments=kind)
        await replies.consume(self._on_answer)

    async def _on_answer(self, message: AbstractIncomingMessage) -> None:
        turn = message.correlation_id or ""
        future = self._waiting.pop(turn, None)
        if future is None:
            self._early.add(turn)
        elif not future.done():
            future.set_result(None)
        await message.ack()

    async def request(self, session: str) -> None:
        """One round trip: publish (confirmed), then wait for the answer."""
        assert self._channel is not None
        self._counter += 1
        turn = secrets.token_urlsafe(16)
        message = aio_pika.Message(
            request_body(session, turn, self._counter), content_type="application/msgpack",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=turn,
            correlation_id=turn, reply_to=self.reply_queue)
        await self._channel.default_exchange.publish(message, routing_key=self.request_queue,
                                                     mandatory=True)
        if turn in self._early:
            self._early.discard(turn)
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting[turn] = future
        try:
            await asyncio.wait_for(future, 30.0)
        finally:
            self._waiting.pop(turn, None)

    async def close(self, *, delete: bool = True) -> None:
        if self._conn is None:
            return
        if delete:
            with contextlib.suppress(Exception):
                channel = await self._conn.channel()
                for queue in (self.request_queue, self.reply_queue):
                    await channel.queue_delete(queue)
        with contextlib.suppress(Exception):
            await self._conn.close()
        self._conn = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def respond(amqp_url: str, queue: str, prefetch: int) -> None:
    """The responder process: answer every request until SIGTERM."""
    conn = await aio_pika.connect(amqp_url, timeout=10,
                                  client_properties={"connection_name": "bench-responder"})
    publish = await conn.channel(publisher_confirms=True)
    consume = await conn.channel()
    await consume.set_qos(prefetch_count=prefetch)
    declared = await consume.declare_queue(queue, passive=True)

    async def on_request(message: AbstractIncomingMessage) -> None:
        request = msgpack.unpackb(message.body, raw=False)
        await publish.default_exchange.publish(
            aio_pika.Message(answer_body(request), content_type="application/msgpack",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=request["turn"] + ".r",
                             correlation_id=message.correlation_id),
            routing_key=message.reply_to or "", mandatory=True)
        await message.ack()

    await declared.consume(on_request)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("responder: consuming", queue, flush=True)
    await stop.wait()
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="bench baseline responder")
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    run_loop(respond(args.amqp_url, args.queue, args.prefetch), uvloop=args.uvloop)


if __name__ == "__main__":
    main()
