"""MemoryBroker.join: the fake knows when all published work is consumed and handled."""

from __future__ import annotations

import asyncio

import pytest

from worker_sdk.broker import Delivery, Outgoing
from worker_sdk.memory import MemoryBroker


async def test_join_with_nothing_to_do_returns_at_once() -> None:
    broker = MemoryBroker()
    await broker.declare("q")
    await broker.join(timeout=1)


async def test_join_waits_for_the_handler_to_finish() -> None:
    broker = MemoryBroker()
    await broker.declare("q")
    release = asyncio.Event()
    handled: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        await release.wait()
        handled.append(delivery.body)
        await delivery.ack()

    await broker.consume("q", handler, prefetch=4)
    await broker.publish([Outgoing("q", b"1", "m1"), Outgoing("q", b"2", "m2")])
    join = asyncio.create_task(broker.join(timeout=5))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not join.done(), "join returned while handlers were still running"
    release.set()
    await join
    assert sorted(handled) == [b"1", b"2"]
    await broker.close()


async def test_join_waits_for_work_that_handlers_cause_on_other_connections() -> None:
    broker = MemoryBroker()
    other = broker.connection()
    await broker.declare("a")
    await broker.declare("b")
    seen: list[str] = []

    async def first(delivery: Delivery) -> None:
        seen.append("a")
        await broker.publish([Outgoing("b", delivery.body, "next")])
        await delivery.ack()

    async def second(delivery: Delivery) -> None:
        await asyncio.sleep(0.01)
        seen.append("b")
        await delivery.ack()

    await broker.consume("a", first, prefetch=1)
    await other.consume("b", second, prefetch=1)
    await broker.publish([Outgoing("a", b"x", "m")])
    await broker.join(timeout=5)
    assert seen == ["a", "b"]
    await other.close()
    await broker.close()


async def test_queues_nobody_consumes_do_not_count() -> None:
    broker = MemoryBroker()
    await broker.declare("dead")
    await broker.publish([Outgoing("dead", b"x", "m")])
    await broker.join(timeout=1)
    assert broker.messages("dead") == [b"x"]


async def test_join_times_out_on_work_that_never_ends() -> None:
    broker = MemoryBroker()
    await broker.declare("q")
    forever = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        await forever.wait()

    await broker.consume("q", handler, prefetch=1)
    await broker.publish([Outgoing("q", b"x", "m")])
    with pytest.raises(TimeoutError):
        await broker.join(timeout=0.05)
    await broker.cancel("q", drain=0)
