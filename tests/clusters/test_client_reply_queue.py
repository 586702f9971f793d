"""The SDK Client's generated reply queue on a RabbitMQ cluster: a quorum queue with a member on
every node, so that when the client's node is killed the client reconnects to another node,
consumes its queue there and gets the notices published meanwhile."""

from __future__ import annotations

import asyncio
import signal
import time
from urllib.parse import urlsplit

import aio_pika
import pytest

from worker_sdk import Client, Settings, wire

from . import nodes
from .conftest import ClusterHarness

pytestmark = [pytest.mark.infra, pytest.mark.disruptive, pytest.mark.cluster,
              pytest.mark.timeout(240)]


def _notice(session: str, n: int) -> aio_pika.Message:
    body = wire.Notice(session=session, id=f"n{n}", in_reply_to="m1", type="output",
                       payload=n).to_wire()
    return aio_pika.Message(wire.encode(body), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)


async def test_a_generated_reply_queue_survives_its_node(
        clustered: ClusterHarness, namespace: str, capsys: pytest.CaptureFixture[str]) -> None:
    client = await Client.connect(Settings(amqp_url=nodes.AMQP_URLS, namespace=namespace))
    try:
        queue = client.reply_queue
        (info,) = [q for q in await nodes.queue_info(namespace) if q["name"] == queue]
        assert sorted(map(str, info["members"])) == sorted(nodes.RABBIT_NODES), info  # type: ignore[call-overload]
        url = client.broker.node_url  # type: ignore[attr-defined]
        node = nodes.node_of_port(int(urlsplit(url).port or 0))
        others = [f"amqp://guest:guest@127.0.0.1:{p}/" for n, p in nodes.RABBIT_NODES.items()
                  if n != node]
        notices = client.notices()
        publisher = await aio_pika.connect(others[0], timeout=10)
        try:
            channel = await publisher.channel(publisher_confirms=True)
            await channel.default_exchange.publish(_notice("s", 1), routing_key=queue)
            assert (await asyncio.wait_for(anext(notices), 30)).payload == 1
            pid = nodes.rabbit_pid(node)
            nodes.signal_pid(pid, signal.SIGKILL)
            killed = time.monotonic()
            await nodes.wait_gone(pid)
            # Published while the client's node is gone: the queue is still there (its other
            # members elect a leader), so the notice waits for the client.
            await channel.default_exchange.publish(_notice("s", 2), routing_key=queue,
                                                   timeout=60)
            got = await asyncio.wait_for(anext(notices), 60)
            assert got.payload == 2
            took = time.monotonic() - killed
            with capsys.disabled():
                print(f"\nclient-reply-queue: {node} (the client's node, leader of its queue) "
                      f"killed; the notice published meanwhile arrived {took:.1f} s later, "
                      f"on {client.broker.node_url}", flush=True)  # type: ignore[attr-defined]
            assert client.broker.node_url != url  # type: ignore[attr-defined]
        finally:
            await publisher.close()
    finally:
        await client.close()
