"""The router shell under injected faults, in memory: publishes that fail before or after
reaching the queue (a lost confirm), and store calls that fail. Nothing may be lost,
duplicated (after dedup by notice id) or reordered."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from router.app import Router
from router.config import RouterConfig
from router.core import ClientArrived, Record, ReplyArrived
from router.store import MemoryStore, Snapshot, StoreUnavailable
from worker_sdk import Client, Context, MemoryBroker, Service, wire
from worker_sdk.broker import Outgoing
from worker_sdk.errors import PublishFailed
from worker_sdk.service import run_services


class FlakyBroker:
    """Delegates to a MemoryBroker; some publishes fail, before or after delivering."""

    def __init__(self, inner: MemoryBroker, rng: random.Random, rate: float) -> None:
        self.inner = inner
        self.rng = rng
        self.rate = rate
        self.faults = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        roll = self.rng.random()
        if roll < self.rate / 2:
            self.faults += 1
            raise PublishFailed("injected: nothing published")
        result = await self.inner.publish(messages)
        if roll < self.rate:
            self.faults += 1
            raise PublishFailed("injected: published, confirm lost")
        return result


class FlakyStore(MemoryStore):
    """A MemoryStore whose commits sometimes fail after applying (a lost reply)."""

    def __init__(self, rng: random.Random, rate: float) -> None:
        super().__init__()
        self.rng = rng
        self.rate = rate
        self.faults = 0

    async def commit(self, *args: Any, **kwargs: Any) -> bool:
        applied = await super().commit(*args, **kwargs)
        if self.rng.random() < self.rate:
            self.faults += 1
            raise StoreUnavailable("injected: commit applied, answer lost")
        return applied

    async def load(self, session: str, dedup_id: str | None = None) -> Snapshot:
        if self.rng.random() < self.rate / 2:
            self.faults += 1
            raise StoreUnavailable("injected: load failed")
        return await super().load(session, dedup_id)


def _services() -> list[Service]:
    root = Service("root")
    child = Service("child")

    @root.on_start
    def start(ctx: Context) -> None:
        ctx.reply(f"start {ctx.payload}", state={"n": 0})

    @root.on_message
    def message(ctx: Context) -> None:
        n = ctx.state["n"] + 1
        if ctx.payload.endswith("deep"):
            ctx.open("child", {"n": n}, state={"n": n})
        else:
            ctx.reply(f"{ctx.payload} #{n}", state={"n": n})

    @root.on_result("child")
    def result(ctx: Context) -> None:
        assert ctx.result is not None
        ctx.reply(f"child said {ctx.result.value}")

    @child.on_start
    def child_start(ctx: Context) -> None:
        ctx.say(f"child {ctx.args['n']}")
        ctx.close(ctx.args["n"] * 10)

    return [root, child]


def _expected(session: str, count: int) -> list[str]:
    out = [f"start {session}-0"]
    for i in range(1, count):
        n = i
        text = f"{session}-{i}" + ("deep" if i % 3 == 0 else "")
        if i % 3 == 0:
            out += [f"child {n}", f"child said {n * 10}"]
        else:
            out.append(f"{text} #{n}")
    return out


@pytest.mark.parametrize("seed,replicas", [(1, 1), (2, 1), (3, 2), (4, 3)])
async def test_no_loss_no_duplicate_no_reorder_under_faults(seed: int, replicas: int) -> None:
    """With several replicas, each one's cached records go stale behind the others' steps:
    the compare-and-set must catch every such step."""
    rng = random.Random(seed)
    memory = MemoryBroker()
    store = FlakyStore(rng, rate=0.1)
    config = RouterConfig(root="root", namespace="f", turn_timeout=0.5, max_attempts=50)
    routers = [Router(config, FlakyBroker(memory.connection(), rng, rate=0.15),  # type: ignore[arg-type]
                      store) for _ in range(replicas)]
    stop = asyncio.Event()
    services = asyncio.create_task(run_services(_services(), memory, "f", 8, stop))
    for router in routers:
        await router.start()
    client = Client(memory, "f")
    await client.start()
    sessions = [f"s{i}" for i in range(12)]
    count = 7
    seen: dict[str, list[str]] = {s: [] for s in sessions}

    async def collect() -> None:
        async for notice in client.notices():
            seen[notice.session].append(notice.payload)

    collector = asyncio.create_task(collect())
    try:
        for i in range(count):
            for s in sessions:
                await client.send(s, f"{s}-{i}" + ("deep" if i and i % 3 == 0 else ""))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while any(len(seen[s]) < len(_expected(s, count)) for s in sessions):
            assert loop.time() < deadline, {s: seen[s] for s in sessions}
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything late would be a duplicate
        for s in sessions:
            assert seen[s] == _expected(s, count), s
            while (snap := await MemoryStore.load(store, s)).outbox:
                assert loop.time() < deadline, f"outbox of {s} never emptied"
                await asyncio.sleep(0.05)
            assert snap.record is not None
            rec = Record.decode(snap.record)
            assert [f.service for f in rec.stack] == ["root"] and rec.turn is None
        faults = sum(r.broker.faults for r in routers)  # type: ignore[attr-defined]
        assert faults > 10 and store.faults > 10, (faults, store.faults)
        if replicas > 1:
            assert sum(r.stats["cas_retries"] for r in routers) > 0, "no stale cache was hit"
    finally:
        collector.cancel()
        stop.set()
        for router in routers:
            await router.stop(grace=1)
        await services
        await client.close()


async def test_a_stale_cached_record_never_drops_a_valid_reply() -> None:
    """Replica A caches the session at its first turn; replica B then runs two more steps.
    A reply for B's turn reaching A must be applied, not fenced off by A's stale copy."""
    memory = MemoryBroker()
    store = MemoryStore()
    config = RouterConfig(root="root", namespace="c")
    a, b = Router(config, memory.connection(), store), Router(config, memory.connection(), store)
    for queue in ("c.ingress", "c.replies", "c.dead", "c.service.root", "fe"):
        await memory.declare(queue)

    def message(msg_id: str) -> Callable[[Snapshot], ClientArrived]:
        msg = wire.ClientMessage("s", msg_id, "fe", payload=msg_id)
        return lambda snap: ClientArrived(msg, snap.seen)

    def reply_to(rec: Record | None) -> ReplyArrived:
        assert rec is not None and rec.turn is not None
        answer = wire.Reply("s", rec.turn.id, "reply", state={"at": rec.turn.id})
        return ReplyArrived(rec.turn.id, answer)

    first = await a.run_step("s", message("m1"), dedup_id="m1")
    await b.run_step("s", lambda snap: reply_to(first.record))
    second = await b.run_step("s", message("m2"), dedup_id="m2")
    applied = await a.run_step("s", lambda snap: reply_to(second.record))
    assert applied.changed and applied.dropped is None
    assert applied.record is not None and applied.record.turn is None
    # And a message id B already took is a duplicate for A too, whatever A cached.
    again = await a.run_step("s", message("m2"), dedup_id="m2")
    assert not again.changed and again.dropped


async def test_a_delivery_that_hits_a_router_bug_is_dead_lettered_not_requeued() -> None:
    class BrokenStore(MemoryStore):
        async def load(self, session: str, dedup_id: str | None = None) -> Snapshot:
            raise RuntimeError("a bug")

    memory = MemoryBroker()
    router = Router(RouterConfig(root="root", namespace="b"), memory, BrokenStore())
    await router.start()
    try:
        msg = wire.ClientMessage("s", "m1", "fe", payload="hi")
        await memory.publish([Outgoing("b.ingress", wire.encode(msg.to_wire()), "m1")])
        for _ in range(200):
            if memory.messages("b.dead"):
                break
            await asyncio.sleep(0.01)
        assert memory.messages("b.dead") == [wire.encode(msg.to_wire())]
        [headers] = memory.headers("b.dead")
        assert headers["x-cb-reason"] == "internal"
        assert headers["x-cb-detail"] == "RuntimeError: a bug"
        assert headers["x-cb-source-queue"] == "b.ingress"
        await asyncio.sleep(0.05)
        assert memory.messages("b.ingress") == [], "acknowledged, not requeued"
        assert router.stats["internal_errors"] == 1
    finally:
        await router.stop(grace=1)
