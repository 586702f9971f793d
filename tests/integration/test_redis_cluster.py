"""The Redis session store on a Redis Cluster: the store contract, where keys land, the
deadline shards, and a whole conversation through the router.

The cluster comes from the ``redis_cluster_url`` fixture: a local 3-master cluster started
for the run, or CLOUDBUNCH_REDIS_CLUSTER_URL.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from router.config import RouterConfig
from router.engine import Engine
from router.redis_store import HINT_SHARDS, RedisStore, split_cluster_url
from router.store import StoreUnavailable
from tests.integration.test_engine_both import EngineFactory, _cleanup
from tests.integration.test_engine_both import test_pizza_script_reads_the_same as pizza_flow
from tests.integration.test_engine_both import test_silent_service_times_out as timeout_flow
from tests.integration.test_redis_store import WallClock
from tests.store_contract import FAR, StoreContract
from worker_sdk import Service
from worker_sdk.amqp import AmqpBroker

pytestmark = pytest.mark.infra


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
async def store(redis_cluster_url: str) -> AsyncIterator[RedisStore]:
    store = RedisStore(redis_cluster_url, "t" + secrets.token_hex(4))
    assert store.is_cluster
    await store.ping()  # fails (not skips) the test when the cluster is down
    try:
        yield store
    finally:
        await store.delete_namespace()
        await store.close()


@pytest.fixture
async def raw(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    split = split_cluster_url(redis_cluster_url)
    assert split is not None
    client = RedisCluster.from_url(split[0])
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


async def keys_by_node(raw: RedisCluster, namespace: str) -> dict[str, set[str]]:
    """The namespace's keys found on each primary, asked of that node alone."""
    found: dict[str, set[str]] = {}
    for node in raw.get_primaries():
        direct = Redis(host=node.host, port=node.port)
        try:
            found[node.name] = {key.decode() async for key in
                                direct.scan_iter(match=namespace + ":*", count=1000)}
        finally:
            await direct.aclose()
    return found


class TestRedisClusterStore(StoreContract):
    """Every contract case, against the cluster."""


# -- where keys land ----------------------------------------------------------------------

async def test_a_session_sits_in_one_slot_and_sessions_spread(store: RedisStore,
                                                              raw: RedisCluster,
                                                              clock: WallClock) -> None:
    sessions = [f"user-{i}" for i in range(60)] + ["a{b}c", "{x}", "séance"]
    for session in sessions:
        assert await store.commit(session, 0, b"r", append=[b"e"], remember="m",
                                  expire_at_ms=clock.now_ms() + FAR, history=[b"h"],
                                  history_max=5)
    where = await keys_by_node(raw, store._ns)
    node_of = {key: name for name, keys in where.items() for key in keys}
    used: set[str] = set()
    for session in sessions:
        keys = store.session_keys(session)
        slots = {await raw.cluster_keyslot(key) for key in keys}  # the server's own answer
        assert len(slots) == 1, session
        nodes = {node_of[key] for key in keys}  # all four keys exist, on one node
        assert len(nodes) == 1, session
        used |= nodes
    primaries = {node.name for node in raw.get_primaries()}
    assert used == primaries
    print(f"\nsessions per primary: { {n: len(k) // 4 for n, k in sorted(where.items())} }")


async def test_delete_namespace_scans_every_primary(store: RedisStore, raw: RedisCluster,
                                                    redis_cluster_url: str,
                                                    clock: WallClock) -> None:
    other = RedisStore(redis_cluster_url, "t" + secrets.token_hex(4))
    try:
        for target in (store, other):
            for i in range(30):
                assert await target.commit(f"s{i}", 0, b"r", append=[b"a"], remember="m",
                                           expire_at_ms=clock.now_ms() + FAR, hint_ms=1)
            await target.claim_due(10, 1000)
        before = await keys_by_node(raw, store._ns)
        assert all(before.values())  # keys on every primary
        total = sum(len(keys) for keys in before.values())
        # Three keys a session, and a hint set and a lease counter per shard used.
        assert total == 30 * 3 + 2 * len({store._hint_key(f"s{i}") for i in range(30)})
        assert await store.delete_namespace() == total
        assert not any((await keys_by_node(raw, store._ns)).values())
        assert (await other.load("s7")).version == 1  # another namespace is untouched
    finally:
        await other.delete_namespace()
        await other.close()


# -- deadline hints across slots ----------------------------------------------------------

async def test_hints_in_every_shard_are_claimed_once(store: RedisStore, raw: RedisCluster,
                                                     redis_cluster_url: str) -> None:
    due = {f"due-{i}": 1000 + i for i in range(200)}
    later = {f"later-{i}": 50_000 for i in range(20)}
    for session, at in {**due, **later}.items():
        await store.add_hint(session, at)
    where = await keys_by_node(raw, store._ns)
    shard_nodes = {name for name, keys in where.items()
                   for key in keys if key.endswith(":due")}
    assert sum(key.endswith(":due") for keys in where.values() for key in keys) == HINT_SHARDS
    assert len(shard_nodes) > 1  # the shards are on several masters
    # Two replicas claim in small batches at once, as router replicas do.
    replica = RedisStore(redis_cluster_url, store._ns)
    try:
        claimed: list[tuple[str, int]] = []
        while True:
            batches = await asyncio.gather(store.claim_due(2000, 60_000, limit=13),
                                           replica.claim_due(2000, 60_000, limit=13))
            if not any(batches):
                break
            for batch in batches:
                claimed.extend(batch)
        names = [session for session, _ in claimed]
        assert len(names) == len(set(names)) and set(names) == set(due)
        for session, lease in claimed:
            await replica.settle_hint(session, lease, None)
        assert await store.claim_due(49_999, 60_000) == []
        assert {s for s, _ in await store.claim_due(50_000, 60_000)} == set(later)
    finally:
        await replica.close()


# -- URLs and errors ----------------------------------------------------------------------

def test_cluster_urls_are_recognised_and_checked() -> None:
    assert split_cluster_url("redis://h:1/0") is None
    assert split_cluster_url("rediss+cluster://u:pw@h1:7000,h2,[::1]:7002/0?ssl_cert_reqs=none") \
        == ("rediss://u:pw@h1:7000?ssl_cert_reqs=none", [("h2", 6379), ("::1", 7002)])
    assert split_cluster_url("redis+cluster://h") == ("redis://h", [])
    for bad in ("redis+cluster://h/1", "redis+cluster://h:x/0", "redis+cluster://h,/0"):
        with pytest.raises(ValueError):
            split_cluster_url(bad)


async def test_a_dead_seed_is_passed_over(redis_cluster_url: str, clock: WallClock) -> None:
    split = split_cluster_url(redis_cluster_url)
    assert split is not None
    live = split[0].split("://", 1)[1]
    store = RedisStore(f"redis+cluster://127.0.0.1:1,{live}", "t" + secrets.token_hex(4))
    try:
        assert await store.commit("s", 0, b"r", expire_at_ms=clock.now_ms() + FAR)
        assert (await store.load("s")).record == b"r"
    finally:
        await store.delete_namespace()
        await store.close()


async def test_unreachable_cluster_is_one_clear_line() -> None:
    store = RedisStore("redis+cluster://user:hunter2@127.0.0.1:1/0", "t" + secrets.token_hex(4))
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        assert time.monotonic() - started < 15
        message = str(caught.value)
        assert "\n" not in message and "hunter2" not in message
        assert message.startswith(
            "Redis is not reachable at redis+cluster://user:***@127.0.0.1:1/0: ")
        with pytest.raises(StoreUnavailable):
            await store.commit("s", 0, b"r", expire_at_ms=1, hint_ms=1)
        with pytest.raises(StoreUnavailable):
            await store.claim_due(1, 1)
    finally:
        await store.close()


# -- the router on the cluster ------------------------------------------------------------

@pytest.fixture
def make_engine(namespace: str, amqp_url: str, redis_cluster_url: str,
                raw: RedisCluster) -> EngineFactory:
    """Like test_engine_both's real mode, with the store on the cluster."""

    @asynccontextmanager
    async def factory(services: list[Service], **options: Any) -> AsyncIterator[Engine]:
        config = RouterConfig(namespace=namespace, amqp_url=amqp_url,
                              redis_url=redis_cluster_url, **options)
        try:
            engine = Engine(services, config, broker=AmqpBroker(amqp_url, config.queue_type),
                            store=RedisStore(redis_cluster_url, namespace))
            await engine.start()
            try:
                yield engine
                # The sessions really went to the cluster.
                assert any((await keys_by_node(raw, namespace)).values())
            finally:
                await engine.stop()
        finally:
            await _cleanup(amqp_url, redis_cluster_url, namespace, services)

    return factory


async def test_pizza_script_on_the_cluster(make_engine: EngineFactory) -> None:
    # The very test the single-server store passes, transcript comparison included.
    await pizza_flow(make_engine)


async def test_turn_timeout_fires_on_the_cluster(make_engine: EngineFactory) -> None:
    # Fired by a claimed deadline hint.
    await timeout_flow(make_engine)
