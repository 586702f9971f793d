"""The partitioned ingress (``--partitions N``, docs/scaling.md): sessions spread over the
router replicas, a replica's death loses nothing, and parties of protocol 1.1 still work."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from router.partitions import partition_queues
from worker_sdk import wire
from worker_sdk.amqp import AmqpBroker
from worker_sdk.client import Client

from .procs import QUEUE_TYPE, Harness, eventually

pytestmark = pytest.mark.infra

FLOWS = ("tests.integration.flows:root", "tests.integration.flows:step")


def expected(session: str, first: int, last: int) -> list[str]:
    """What flows.root answers to messages ``{session}-m{i}`` numbered ``first``..``last``."""
    return [f"{session}-m{i}".upper() + f"#{i}" for i in range(first, last + 1)]


async def partitioned(e2e: Harness, count: int) -> None:
    """Clean up the partition queues with the rest of the namespace."""
    e2e.queues.update(q.name for q in partition_queues(e2e.ns, count))


async def client(e2e: Harness, partitions: int) -> Client:
    broker = AmqpBroker(e2e.amqp_url, QUEUE_TYPE, name="test-client")
    await broker.connect()
    front = Client(broker, e2e.ns, partitions=partitions)
    await front.start()
    e2e.queues.add(front.reply_queue)
    return front


async def converse(front: Client, sessions: list[str], first: int, last: int) -> None:
    """Send messages ``first``..``last`` of every session; check every answer, in order."""
    got: dict[str, list[Any]] = {s: [] for s in sessions}
    for i in range(first, last + 1):
        for s in sessions:
            await front.send(s, f"{s}-m{i}", seq=i)

    notices = front.notices()

    async def collect() -> None:
        async for notice in notices:
            got[notice.session].append(notice.payload)
            if all(len(v) >= last - first + 1 for v in got.values()):
                return
    try:
        await asyncio.wait_for(collect(), 20.0)
    finally:
        await notices.aclose()
    for s in sessions:
        assert got[s] == expected(s, first, last), s


def steps(output: str) -> int:
    """The steps a stopped router reports in its last log line."""
    found = re.findall(r"event=router_stopped .*?\bsteps=(\d+)", output)
    return int(found[-1]) if found else 0


async def test_sessions_spread_over_the_replicas_and_survive_one(e2e: Harness) -> None:
    await partitioned(e2e, 4)
    first = await e2e.router("root", partitions=4)
    second = await e2e.router("root", partitions=4)
    await e2e.worker(*FLOWS)
    for proc in (first, second):  # started: consuming every partition
        await eventually(lambda p=proc: "event=router_started" in p.output(), 10.0,
                         f"{proc.name} started")
    assert await e2e.consumers(e2e.ingress) == 2  # 1.1 frontends still have theirs
    # Both replicas know each other (heartbeats, every second), so each owns two
    # partitions: the first learns of the second at its next heartbeat.
    await eventually(lambda: _replicas_are(e2e, 2), 10.0, "both routers in NS:replicas")
    for proc in (first, second):
        await eventually(lambda p=proc: "event=replicas_changed replicas=2" in p.output(),
                         10.0, f"{proc.name} knowing of both")
    front = await client(e2e, 4)
    sessions = [f"s{i}" for i in range(16)]
    assert len({wire.partition_of(s, 4) for s in sessions}) == 4
    try:
        await converse(front, sessions, 1, 3)
        # Handovers have put every partition with its owner by now: more turns, then
        # both replicas must have stepped sessions (single active consumers alone would
        # have given every partition to the router that started first).
        await converse(front, sessions, 4, 6)
        await second.stop()
        assert steps(second.output()) > 0, second.output(tail=40)
        # The first takes the second's partitions over at once (RabbitMQ's single active
        # consumer); nothing is lost, nothing out of order.
        await converse(front, sessions, 7, 9)
        first.kill()  # no goodbye: the broker notices the lost connection
        await eventually(lambda: _no_consumer(e2e), 10.0, "the killed router's consumers gone")
        third = await e2e.router("root", partitions=4)
        await converse(front, sessions, 10, 11)
        await third.stop()
        assert steps(third.output()) > 0
    finally:
        await front.close()
        await front.broker.close()


async def test_a_frontend_of_protocol_1_1_is_served_by_partitioned_routers(e2e: Harness) -> None:
    await partitioned(e2e, 2)
    await e2e.router("root", partitions=2)
    await e2e.worker(*FLOWS)
    front = await e2e.frontend()  # publishes to NS.ingress, as protocol 1.1 says
    mid = await front.send("old", "old-m1", seq=1)
    assert await front.outputs(mid, 1, timeout=10) == ["OLD-M1#1"]


async def test_a_service_of_protocol_1_1_answers_a_partitioned_router(e2e: Harness) -> None:
    """A raw service ignores the dispatch's reply_to and publishes to NS.replies: served."""
    await partitioned(e2e, 2)
    service = await e2e.service("A")
    await e2e.router("A", partitions=2)
    front = await client(e2e, 2)
    try:
        mid = await front.send("raw", "hello")
        dispatch = await service.next(timeout=10)
        await service.reply(dispatch, "reply", output=["hi"])
        notice = await anext(front.session_notices("raw"))
        assert (notice.in_reply_to, notice.payload) == (mid, "hi")
    finally:
        await front.close()
        await front.broker.close()


async def test_a_frontend_with_more_partitions_falls_back_to_the_shared_queue(
        e2e: Harness) -> None:
    await partitioned(e2e, 2)
    await e2e.router("root", partitions=2)
    await e2e.worker(*FLOWS)
    front = await client(e2e, 8)  # partitions 2..7 have no queue: NS.ingress takes them
    try:
        sessions = [f"f{i}" for i in range(12)]
        assert any(wire.partition_of(s, 8) >= 2 for s in sessions)
        await converse(front, sessions, 1, 2)
    finally:
        await front.close()
        await front.broker.close()


async def _no_consumer(e2e: Harness) -> bool:
    return await e2e.consumers(e2e.replies) == 0


async def _replicas_are(e2e: Harness, count: int) -> bool:
    found = await e2e.store._redis.zcard(f"{e2e.ns}:replicas")
    return int(found) == count
