"""The ceiling: a stateless forwarder in place of the router (``python -m bench.forwarder``).

It consumes the namespace's ingress queue and sends each client message on as a dispatch to
the service queue; it consumes the replies queue and sends each reply's outputs as notices to
the client's queue. No Redis and no session state: what the notices need (the client's
queue, the message id) travels in the turn id. Every publish is persistent, mandatory and
confirmed, and each delivery is acknowledged after its publishes are confirmed, as the router
does. So a turn has the routed path's four publishes and hops, and ``routed / forwarder``
is the router's own efficiency, ``forwarder / direct`` the price of the extra hops.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import signal
from typing import Any

import aio_pika
import msgpack
from aio_pika.abc import AbstractIncomingMessage

from .procs import run_loop
from .services import state


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _turn(reply_to: str, message_id: str) -> str:
    """A turn id that carries where the notices go (the forwarder keeps nothing)."""
    carried = pack([reply_to, message_id])
    return secrets.token_urlsafe(12) + "." + base64.urlsafe_b64encode(carried).decode()


def _carried(turn: str) -> tuple[str, str]:
    reply_to, message_id = msgpack.unpackb(base64.urlsafe_b64decode(turn.split(".", 1)[1]),
                                           raw=False)
    return reply_to, message_id


async def forward(amqp_url: str, namespace: str, service: str, queue_type: str,
                  prefetch: int) -> None:
    conn = await aio_pika.connect(amqp_url, timeout=10,
                                  client_properties={"connection_name": "bench-forwarder"})
    publish = await conn.channel(publisher_confirms=True)
    consume = await conn.channel()
    await consume.set_qos(prefetch_count=prefetch)
    args = {"x-queue-type": queue_type}
    ingress = await consume.declare_queue(f"{namespace}.ingress", durable=True, arguments=args)
    replies = await consume.declare_queue(f"{namespace}.replies", durable=True, arguments=args)
    # Contract 1.1: what frontends and services publish arrives through these exchanges.
    for kind, queue in (("ingress", ingress), ("replies", replies)):
        exchange = await consume.declare_exchange(f"{namespace}.x.{kind}", "direct",
                                                  durable=True)
        await queue.bind(exchange, routing_key=kind)
    service_queue = f"{namespace}.service.{service}"

    def message(body: bytes, message_id: str, headers: dict[str, Any]) -> aio_pika.Message:
        return aio_pika.Message(body, content_type="application/msgpack",
                                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                message_id=message_id, headers=headers or None)

    async def on_client(delivery: AbstractIncomingMessage) -> None:
        m = msgpack.unpackb(delivery.body, raw=False)
        turn = _turn(m["reply_to"], m["id"])
        dispatch = {"v": 1, "session": m["session"], "turn": turn, "event": "message",
                    "depth": 0, "attempt": 1, "state": state(0), "payload": m.get("payload"),
                    "bubbled": False}
        await publish.default_exchange.publish(
            message(pack(dispatch), f"{turn}.1", dict(delivery.headers or {})),
            routing_key=service_queue, mandatory=True)
        await delivery.ack()

    async def on_reply(delivery: AbstractIncomingMessage) -> None:
        r = msgpack.unpackb(delivery.body, raw=False)
        reply_to, message_id = _carried(r["turn"])
        sends = []
        for i, output in enumerate(r.get("output") or []):
            notice_id = f"{r['turn']}.{i}"
            notice = {"v": 1, "session": r["session"], "id": notice_id,
                      "in_reply_to": message_id, "type": "output", "payload": output}
            sends.append(publish.default_exchange.publish(
                message(pack(notice), notice_id, dict(delivery.headers or {})),
                routing_key=reply_to, mandatory=True))
        await asyncio.gather(*sends)
        await delivery.ack()

    await ingress.consume(on_client)
    await replies.consume(on_reply)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"forwarder: consuming {ingress.name} and {replies.name}", flush=True)
    await stop.wait()
    cleanup = await conn.channel()
    for kind in ("ingress", "replies"):  # the queues are the bench's to delete
        await cleanup.exchange_delete(f"{namespace}.x.{kind}")
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="bench ceiling: a stateless forwarder")
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--queue-type", default="quorum")
    parser.add_argument("--prefetch", type=int, default=64)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    run_loop(forward(args.amqp_url, args.namespace, args.service, args.queue_type,
                     args.prefetch), uvloop=args.uvloop)


if __name__ == "__main__":
    main()
