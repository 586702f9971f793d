"""The SDK Client's notices: what a conversation does not return is kept, not dropped."""

from __future__ import annotations

import asyncio

from examples.tutorial import ask_name, greeter
from router.app import Router
from router.config import RouterConfig
from router.store import MemoryStore
from worker_sdk import wire
from worker_sdk.broker import Outgoing
from worker_sdk.client import Client
from worker_sdk.memory import MemoryBroker
from worker_sdk.service import run_services

NS = "cbc"


async def test_a_notice_that_waited_in_the_queue_is_kept_for_unclaimed() -> None:
    """A reminder that waited in a named reply queue while the frontend was away reaches the
    restarted frontend: ``conversation()`` returns its own chain's notices only, and the
    reminder is in ``unclaimed()`` afterwards, not lost."""
    broker = MemoryBroker()
    await broker.connect()
    router = Router(RouterConfig(root="greeter", namespace=NS), broker, MemoryStore())
    await router.start()
    stop = asyncio.Event()
    services = asyncio.create_task(run_services([greeter, ask_name], broker, NS, 4, stop))
    queue = f"{NS}.client.web"
    try:
        await broker.declare_own(queue)
        waited = wire.Notice(session="s1", id="n-old", in_reply_to="m-old", type="output",
                             payload="Still there? What is your name?")
        other = wire.Notice(session="s2", id="n-s2", in_reply_to="m-s2", type="output",
                            payload="for another session")
        for n in (waited, other):
            assert await broker.publish([Outgoing(queue, wire.encode(n.to_wire()), n.id)])
        async with Client(broker, NS, reply_queue=queue) as client:
            notices = await client.conversation("s1", "hi", settle=0.2)
            assert [n.payload for n in notices] == ["Hello! What is your name?"]
            assert client.unclaimed("s1") == [waited]
            assert client.unclaimed("s1") == []
            assert client.unclaimed() == [other]
    finally:
        stop.set()
        await services
        await router.stop()
        await broker.close()
