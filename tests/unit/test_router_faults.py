"""The router shell under injected faults, in memory: publishes that fail before or after
reaching the queue (a lost confirm), and store calls that fail. Nothing may be lost,
duplicated (after dedup by notice id) or reordered."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest

from router.app import Router
from router.config import RouterConfig
from router.core import Record
from router.store import MemoryStore, Snapshot
from worker_sdk import Client, Context, MemoryBroker, Service
from worker_sdk.broker import Outgoing
from worker_sdk.errors import PublishFailed, StoreUnavailable
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


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_no_loss_no_duplicate_no_reorder_under_faults(seed: int) -> None:
    rng = random.Random(seed)
    memory = MemoryBroker()
    broker = FlakyBroker(memory, rng, rate=0.15)
    store = FlakyStore(rng, rate=0.1)
    config = RouterConfig(root="root", namespace="f", turn_timeout=0.5, max_attempts=50)
    router = Router(config, broker, store)  # type: ignore[arg-type]
    stop = asyncio.Event()
    services = asyncio.create_task(run_services(_services(), memory, "f", 8, stop))
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
        assert broker.faults > 10 and store.faults > 10, (broker.faults, store.faults)
    finally:
        collector.cancel()
        stop.set()
        await router.stop(grace=1)
        await services
        await client.close()
