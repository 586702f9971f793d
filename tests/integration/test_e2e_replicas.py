"""Several router replicas and worker replicas at once: one turn at a time per session, `seq`
order, and nothing lost when a replica is killed (PROTOCOL.md guarantees 1 and 3)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from .procs import Harness, eventually

pytestmark = pytest.mark.infra

FLOWS = ("tests.integration.flows:root", "tests.integration.flows:step")


def expected(session: str, count: int) -> list[str]:
    """What flows.root answers to messages ``{session}-m1`` ... in order."""
    return [f"{session}-m{i}".upper() + f"#{i}" for i in range(1, count + 1)]


async def test_two_routers_two_workers(e2e: Harness) -> None:
    await e2e.router("root", turn_timeout=2)
    await e2e.router("root", turn_timeout=2)
    await e2e.worker(*FLOWS)
    await e2e.worker(*FLOWS)
    assert await e2e.consumers(e2e.ingress) == 2
    assert await e2e.consumers(e2e.replies) == 2
    assert await e2e.consumers(f"{e2e.ns}.service.step") == 2
    front = await e2e.frontend()
    sessions = [f"s{i}" for i in range(10)]
    ids: dict[str, list[str]] = {s: [] for s in sessions}
    for i in range(1, 4):
        for s in sessions:
            ids[s].append(await front.send(s, f"{s}-m{i}", seq=i))
    for s in sessions:
        got = [(await front.outputs(mid, 1, timeout=10))[0] for mid in ids[s]]
        assert got == expected(s, 3), s
    for s in sessions:
        await e2e.idle(s)
        assert await e2e.stack(s) == [("root", 3)]
    mid = await front.send("s0", "bye")
    notices = await front.wait(mid, 1)
    assert notices[0]["type"] == "end"


async def test_one_turn_at_a_time_per_session_across_replicas(e2e: Harness) -> None:
    a = await e2e.service("A")
    in_flight: set[str] = set()
    overlaps: list[tuple[str, str]] = []
    turns: list[str] = []
    copies: list[str] = []

    async def serve(d: dict[str, Any]) -> None:
        # A copy of a turn already seen is allowed (guarantee 4: another replica may publish
        # a dispatch again); it is answered but is not a second dispatch of the session.
        copy = d["turn"] in turns or d["attempt"] != 1
        copies.extend([d["turn"]] if copy else [])
        if not copy:
            if in_flight:
                overlaps.append((next(iter(in_flight)), d["turn"]))
            in_flight.add(d["turn"])
            turns.append(d["turn"])
        await asyncio.sleep(random.uniform(0.005, 0.03))
        in_flight.discard(d["turn"])
        count = (d.get("state") or 0) + 1
        await a.reply(d, "reply", state=count, output=[d.get("payload")])

    a.handler = serve
    await e2e.router("A")
    await e2e.router("A")
    front = await e2e.frontend()
    payloads = [f"p{i}" for i in range(20)]
    ids = await asyncio.gather(*(front.send("one", p) for p in payloads))
    for mid, p in zip(ids, payloads, strict=True):
        assert await front.outputs(mid, 1, timeout=15) == [p]
    await e2e.idle("one")
    assert overlaps == []
    assert len(turns) == len(set(turns)) == 20
    print(f"copies of dispatches: {len(copies)}")
    assert await e2e.stack("one") == [("A", 20)]


async def test_seq_order_across_replicas_when_published_shuffled(e2e: Harness) -> None:
    a = await e2e.service("A")

    async def serve(d: dict[str, Any]) -> None:
        await a.reply(d, "reply", output=[d.get("payload")])

    a.handler = serve
    await e2e.router("A", seq_hold=1.5)
    await e2e.router("A", seq_hold=1.5)
    front = await e2e.frontend()
    order = list(range(1, 21))
    random.shuffle(order)
    if order == sorted(order):
        order.reverse()
    bodies = {n: front.body("ordered", n, seq=n) for n in order}
    await asyncio.gather(*(front.send("ordered", n, id=bodies[n]["id"], seq=n) for n in order))
    def unique() -> list[Any]:  # a re-sent notice has the same id (guarantee 4)
        seen: dict[str, Any] = {}
        for n in front.notices:
            seen.setdefault(n["id"], n["payload"])
        return list(seen.values())

    await eventually(lambda: len(unique()) >= 20, 10, "20 outputs")
    await asyncio.sleep(0.2)
    assert unique() == list(range(1, 21))


async def test_kill_9_of_a_replica_loses_nothing(e2e: Harness) -> None:
    victim = await e2e.router("root", turn_timeout=1, seq_hold=2)
    await e2e.router("root", turn_timeout=1, seq_hold=2)
    await e2e.worker(*FLOWS, prefetch=8)
    front = await e2e.frontend()
    sessions = [f"k{i}" for i in range(30)]
    ids: dict[str, list[str]] = {}
    sends = []
    for s in sessions:
        ids[s] = [front.body(s, f"{s}-m{i}", seq=i)["id"] for i in range(1, 6)]
    for i in range(1, 6):
        for s in sessions:
            sends.append(front.send(s, f"{s}-m{i}", id=ids[s][i - 1], seq=i))
    await asyncio.gather(*sends)
    # Midway: some chains are done, many are in flight.
    await eventually(lambda: len(front.notices) >= 40, 10, "the first outputs")
    victim.process.kill()
    await victim.process.wait()
    done_at_kill = len(front.notices)
    for s in sessions:
        got = []
        for mid in ids[s]:
            notices = await front.wait(mid, 1, timeout=20)
            assert [n["type"] for n in notices] == ["output"], notices
            got.append(notices[0]["payload"])
        assert got == expected(s, 5), s
    for s in sessions:
        await e2e.idle(s, timeout=10)
        assert await e2e.stack(s) == [("root", 5)], s
    assert done_at_kill < 150, "the kill came too late to test anything"
