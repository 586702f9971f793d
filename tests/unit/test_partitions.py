"""Partitioned ingress (router.partitions, docs/scaling.md): the hash every party computes,
the assignment of partitions to replicas, and handovers, on the in-memory broker."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.tutorial import ask_name, greeter
from harness.waiting import eventually
from router.app import Router
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.partitions import Partitions, owner, partition_queues
from router.store import MemoryStore, StoreUnavailable
from worker_sdk import wire
from worker_sdk.broker import Outgoing
from worker_sdk.client import Client
from worker_sdk.errors import ConfigError
from worker_sdk.memory import MemoryBroker
from worker_sdk.service import run_services

NS = "cbp"


def test_the_partition_of_a_session_is_a_fixed_function() -> None:
    """Vectors for a party in another language: SHA-256 of the id's UTF-8, its first 8
    bytes as a big-endian integer, modulo the count (``printf alice | sha256sum``)."""
    assert wire.partition_of("alice", 16) == 0x2BD806C97F0E00AF % 16 == 15
    assert wire.partition_of("bob", 16) == 0x81B637D8FCD2C6DA % 16 == 10
    assert wire.partition_of("bob", 7) == 0x81B637D8FCD2C6DA % 7
    assert wire.partition_of("anything", 1) == 0


@given(st.text(min_size=1, max_size=50), st.integers(1, wire.MAX_PARTITIONS))
def test_a_partition_is_in_range(session: str, count: int) -> None:
    assert 0 <= wire.partition_of(session, count) < count


@pytest.mark.parametrize(("reply_to", "key"), [
    (None, "replies"), ("", "replies"), ("replies", "replies"), ("replies.3", "replies.3"),
    ("replies.003", "replies.3"), ("replies.255", "replies.255"),
    ("replies.256", "replies"), ("replies.1000", "replies"), ("replies.", "replies"),
    ("replies.²", "replies"), ("replies.-1", "replies"), ("ingress.3", "replies"),
    ("cb.client.abc", "replies"),
])
def test_a_reply_takes_the_partition_its_dispatch_names_and_nothing_else(
        reply_to: str | None, key: str) -> None:
    assert wire.reply_key(reply_to) == key


def test_partitions_spread_evenly_over_the_live_replicas() -> None:
    replicas = ["c", "a", "b"]
    owners = Counter(owner(p, replicas) for p in range(12))
    assert owners == {"a": 4, "b": 4, "c": 4}
    assert owner(0, ["a"]) == "a"
    assert owner(5, []) is None
    assert [q.name for q in partition_queues("ns", 2)] == [
        "ns.ingress.0", "ns.ingress.1", "ns.replies.0", "ns.replies.1"]
    assert [q.key for q in partition_queues("ns", 1)] == ["ingress.0", "replies.0"]


def test_a_client_refuses_a_partition_count_out_of_range() -> None:
    with pytest.raises(ConfigError, match="partitions must be 0 to 256"):
        Client(MemoryBroker(), NS, partitions=257)


@dataclass
class Pair:
    """Two router replicas on one in-memory broker and store, serving the tutorial."""

    memory: MemoryBroker
    first: Router
    second: Router

    @property
    def routers(self) -> tuple[Router, Router]:
        return self.first, self.second


@contextlib.asynccontextmanager
async def two_routers(partitions: int, other: int | None = None, *,
                      metrics: bool = False) -> AsyncIterator[Pair]:
    """Two started replicas (the second with ``other`` partitions, if given) and the
    tutorial's services; all stopped afterwards."""
    memory = MemoryBroker()
    await memory.connect()
    store = MemoryStore()
    configs = [RouterConfig(root="greeter", namespace=NS, partitions=n)
               for n in (partitions, partitions if other is None else other)]
    first = Router(configs[0], memory, store,
                   metrics=RouterMetrics(configs[0].core()) if metrics else None)
    second = Router(configs[1], memory.connection(), store,
                    metrics=RouterMetrics(configs[1].core()) if metrics else None)
    await second.broker.connect()
    stop = asyncio.Event()
    services = asyncio.create_task(run_services([greeter, ask_name], memory, NS, 4, stop))
    try:
        yield Pair(memory, first, second)
    finally:
        stop.set()
        await services
        await second.stop()
        await first.stop()
        await memory.close()


def parts(router: Router) -> Partitions:
    assert router.partitions is not None
    return router.partitions


async def test_each_replica_ends_up_serving_the_partitions_it_owns() -> None:
    """Both replicas consume every partition; the one that started first is active on
    all of them until the handovers put each partition with its owner."""
    async with two_routers(4) as pair:
        first, second = pair.routers
        await first.start()
        await second.start()
        await parts(first)._beat()  # learn of the second now, not in a second
        assert parts(first).live == parts(second).live
        sessions = [f"s{i}" for i in range(24)]
        assert {wire.partition_of(s, 4) for s in sessions} == {0, 1, 2, 3}
        async with Client(pair.memory, NS, partitions=4) as client:
            for round_ in range(3):
                for s in sessions:
                    notices = await client.conversation(s, f"name{round_}", settle=0)
                    assert notices, s
            # Every partition now with its owner: the next turns step only there.
            for owning, other in ((first, second), (second, first)):
                before = (owning.stats["steps"], other.stats["steps"])
                for s in sessions:
                    if parts(owning).owns(wire.partition_of(s, 4)):
                        assert await client.conversation(s, "again", settle=0)
                assert other.stats["steps"] == before[1]
                assert owning.stats["steps"] > before[0]
        assert first.stats["handovers"] + second.stats["handovers"] >= 2
        # Every message went through a partition queue, none through the shared one.
        assert pair.memory.messages(f"{NS}.ingress") == []


async def test_a_stopped_replica_leaves_and_the_other_owns_everything() -> None:
    async with two_routers(2) as pair:
        first, second = pair.routers
        await first.start()
        await second.start()
        await parts(first)._beat()
        assert len(parts(first).live) == 2
        await second.stop()
        await parts(first)._beat()
        assert parts(first).live == [parts(first).replica]
        assert parts(first).owns(0) and parts(first).owns(1)


async def test_dispatches_of_a_partitioned_router_name_the_session_s_replies_partition(
        ) -> None:
    memory = MemoryBroker()
    await memory.connect()
    router = Router(RouterConfig(root="svc", namespace=NS, partitions=8), memory,
                    MemoryStore())
    await router.start()
    queue = f"{NS}.service.svc"
    await memory.declare(queue)
    seen: list[str | None] = []

    async def service(delivery: object) -> None:
        seen.append(delivery.reply_to)  # type: ignore[attr-defined]
        await delivery.ack()  # type: ignore[attr-defined]

    await memory.consume(queue, service, prefetch=4)
    try:
        async with Client(memory, NS, partitions=8) as client:
            await client.send("someone", "hi")
            await eventually(lambda: len(seen) == 1, 5.0, "the dispatch")
        assert seen == [f"replies.{wire.partition_of('someone', 8)}"]
    finally:
        await router.stop()
        await memory.close()


async def test_metrics_show_ownership_and_handovers() -> None:
    async with two_routers(3, metrics=True) as pair:
        first, second = pair.routers
        metrics = [r.metrics for r in pair.routers]
        assert metrics[0] is not None and metrics[1] is not None
        await first.start()
        assert _value(metrics[0], "cloudbunch_router_partitions_owned") == 3
        await second.start()
        await parts(first)._beat()
        owned = [_value(m, "cloudbunch_router_partitions_owned") for m in metrics]
        assert sorted(owned) == [1, 2]
        assert [_value(m, "cloudbunch_router_replicas") for m in metrics] == [2, 2]
        async with Client(pair.memory, NS, partitions=3) as client:
            for i in range(12):
                assert await client.conversation(f"m{i}", "hi", settle=0)
        handed = [_value(m, "cloudbunch_router_partition_handovers_total") for m in metrics]
        assert handed == [first.stats["handovers"], second.stats["handovers"]]
        assert sum(handed) >= 1


def _value(metrics: RouterMetrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.mark.parametrize(("reply_to", "bound", "arrives_in"), [
    ("replies.1", ("replies", "replies.1"), "replies.1"),  # the partition the dispatch names
    ("replies.5", ("replies", "replies.1"), "replies"),  # gone: the shared queue
    (None, ("replies", "replies.1"), "replies"),  # protocol 1.1
])
async def test_a_service_replies_to_the_partition_its_dispatch_names(
        reply_to: str | None, bound: tuple[str, ...], arrives_in: str) -> None:
    memory = MemoryBroker()
    await memory.connect()
    exchange = wire.exchange_names(NS)["replies"]
    for key in bound:
        await memory.declare(f"{NS}.{key}")
        await memory.bind(exchange, key, f"{NS}.{key}")
    service_queue = wire.service_queue(NS, "greeter")
    await memory.declare(service_queue)
    stop = asyncio.Event()
    services = asyncio.create_task(run_services([greeter], memory, NS, 4, stop))
    try:
        dispatch = wire.Dispatch(session="s", turn="t1", event="start", depth=0)
        await memory.publish([Outgoing(service_queue, wire.encode(dispatch.to_wire()), "d1",
                                       reply_to=reply_to)])
        await eventually(lambda: any(memory.messages(f"{NS}.{k}") for k in bound), 5.0,
                         "the reply")
        assert [k for k in bound if memory.messages(f"{NS}.{k}")] == [arrives_in]
    finally:
        stop.set()
        await services
        await memory.close()


async def test_a_frontend_counting_partitions_differently_is_served_and_named(
        caplog: pytest.LogCaptureFixture) -> None:
    memory = MemoryBroker()
    await memory.connect()
    router = Router(RouterConfig(root="greeter", namespace=NS, partitions=4), memory,
                    MemoryStore())
    stop = asyncio.Event()
    services = asyncio.create_task(run_services([greeter, ask_name], memory, NS, 4, stop))
    try:
        await router.start()
        sessions = [f"x{i}" for i in range(8)]
        assert any(wire.partition_of(s, 2) != wire.partition_of(s, 4) for s in sessions)
        async with Client(memory, NS, partitions=2) as client:  # the routers say 4
            for s in sessions:
                assert await client.conversation(s, "hi", settle=0), s
        assert router.stats["misrouted"] > 0
        said = [r.getMessage() for r in caplog.records if "partition_mismatch" in r.getMessage()]
        assert len(said) == 1, said  # once a minute at most
        assert "a frontend uses another --partitions than this router" in said[0]
    finally:
        stop.set()
        await services
        await router.stop()
        await memory.close()


async def test_routers_counting_partitions_differently_say_so_and_keep_apart(
        caplog: pytest.LogCaptureFixture) -> None:
    async with two_routers(2, 3) as pair:
        two, three = pair.routers
        await two.start()
        await three.start()
        await parts(two)._beat()
        assert parts(two).live == [parts(two).replica]
        assert parts(three).live == [parts(three).replica]
        assert parts(two).owns(0) and parts(two).owns(1)
        said = [r.getMessage() for r in caplog.records if "partitions_mismatch" in r.getMessage()]
        assert said and "run with --partitions 2, this one with 3" in said[0], said


class _StoreAway(MemoryStore):
    async def replicas(self, replica: str, now_ms: int, ttl_ms: int) -> list[str]:
        raise StoreUnavailable("Redis is not answering")


async def test_a_replica_that_never_heard_from_the_store_owns_every_partition() -> None:
    """Until its first heartbeat succeeds, a replica knows only itself: it owns every
    partition, so that it never hands a queue over to nobody."""
    memory = MemoryBroker()
    await memory.connect()
    router = Router(RouterConfig(root="greeter", namespace=NS, partitions=3), memory,
                    _StoreAway())
    try:
        await router.start()
        assert all(parts(router).owns(p) for p in range(3))
    finally:
        await router.stop()
        await memory.close()
