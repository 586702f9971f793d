"""The Redis session store against the shared store contract, and Redis specifics."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from router import redis_store
from router.redis_store import RedisStore
from router.store import DEDUP_MEMORY, DEFAULT_REDIS_URL, StoreUnavailable
from tests.store_contract import FAR, StoreContract
from worker_sdk.errors import ConfigError
from worker_sdk.urls import redact

pytestmark = pytest.mark.infra

REDIS_URL = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)


class WallClock:
    """Real time: Redis expires keys by its own clock, on this machine."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    async def advance(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
async def store() -> AsyncIterator[RedisStore]:
    store = RedisStore(REDIS_URL, "t" + secrets.token_hex(4))
    await store.ping()  # fails (not skips) the test when Redis is down
    try:
        yield store
    finally:
        await store.delete_namespace()
        await store.close()


@pytest.fixture
async def raw() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


class TestRedisStore(StoreContract):
    """Every contract case, against the real Redis."""


async def test_keys_of_a_session_share_one_slot_whatever_the_id(store: RedisStore) -> None:
    for session in ("plain", "a{b}c", "{x}", "}{", "{}", "séance"):
        keys = store.session_keys(session)
        assert len({key_slot(key.encode()) for key in keys}) == 1, session
        assert all(key.startswith(store._ns + ":{") for key in keys)
    # Ids that share a brace group still land on independent tags.
    assert store.session_keys("{x}1")[0] != store.session_keys("{x}2")[0]


async def test_delete_namespace_removes_every_key(store: RedisStore, raw: Redis,
                                                  clock: WallClock) -> None:
    other = RedisStore(REDIS_URL, "t" + secrets.token_hex(4))
    try:
        for target in (store, other):
            assert await target.commit("s", 0, b"r", append=[b"a"], remember="m",
                                       expire_at_ms=clock.now_ms() + FAR, hint_ms=1)
            await target.claim_due(10, 1000)
        assert len([k async for k in raw.scan_iter(match=store._ns + ":*")]) == 5
        assert await store.delete_namespace() == 5
        assert [k async for k in raw.scan_iter(match=store._ns + ":*")] == []
        assert (await other.load("s")).version == 1  # another namespace is untouched
    finally:
        await other.delete_namespace()
        await other.close()


async def test_memory_per_idle_session(store: RedisStore, raw: Redis,
                                       clock: WallClock) -> None:
    async def usage(session: str) -> int:
        total = 0
        for key in store.session_keys(session):
            total += await raw.memory_usage(key, samples=0) or 0
        return total

    record = bytes(100)
    expire = clock.now_ms() + FAR
    figures = {}
    for ids in (1, 10, 100, DEDUP_MEMORY):
        session = f"idle-{ids}"
        for version in range(ids):
            assert await store.commit(session, version, record, expire_at_ms=expire,
                                      remember=secrets.token_hex(18))
        figures[ids] = await usage(session)
    print("\nbytes per idle session (100-byte record, N remembered ids): "
          + ", ".join(f"N={n}: {b}" for n, b in figures.items()))
    assert figures[1] <= 1024


async def test_unreachable_redis_is_one_clear_line() -> None:
    store = RedisStore("redis://user:hunter2@127.0.0.1:1/0", "t" + secrets.token_hex(4))
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
        assert time.monotonic() - started < 15  # bounded retries, no endless spin
        message = str(caught.value)
        assert "\n" not in message and "hunter2" not in message
        assert message.startswith("Redis is not reachable at redis://user:***@127.0.0.1:1/0: ")
        assert message.endswith("; start it or correct CLOUDBUNCH_REDIS_URL (--redis-url)")
        with pytest.raises(StoreUnavailable):
            await store.load("s")
        with pytest.raises(StoreUnavailable):
            await store.commit("s", 0, b"r", expire_at_ms=1, hint_ms=1)
    finally:
        await store.close()


async def test_starting_waits_for_redis_saying_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """A process starting before Redis waits for it (connect's window), with one warning,
    then one line naming the URL and the setting: the CLI's wait, like the broker's."""
    store = RedisStore("redis://user:hunter2@127.0.0.1:1/0", "t" + secrets.token_hex(4))
    try:
        started = time.monotonic()
        with caplog.at_level("WARNING", "router.redis_store"), \
                pytest.raises(StoreUnavailable) as caught:
            await store.connect(timeout=2)
        waited = time.monotonic() - started
        assert 2 <= waited < 10, waited
        message = str(caught.value)
        assert message.startswith("Redis is not reachable at redis://user:***@127.0.0.1:1/0 (")
        assert message.endswith(" after trying for 2 s: start it or correct "
                                "CLOUDBUNCH_REDIS_URL (--redis-url)"), message
        warnings = [r.getMessage() for r in caplog.records if "redis_unreachable" in
                    r.getMessage()]
        assert len(warnings) == 1 and "retrying for 2 s" in warnings[0], warnings
        assert "hunter2" not in message + "".join(warnings)
    finally:
        await store.close()


async def refusal(url: str) -> str:
    """The ConfigError line ``connect`` raises for ``url``, at once (no retry window)."""
    store = RedisStore(url, "t" + secrets.token_hex(4))
    try:
        started = time.monotonic()
        with pytest.raises(ConfigError) as caught:
            await store.connect()
        assert time.monotonic() - started < 3
    finally:
        await store.close()
    return str(caught.value)


async def test_a_database_that_does_not_exist_is_not_retried() -> None:
    url = REDIS_URL.rsplit("/", 1)[0] + "/99"
    assert await refusal(url) == (
        f"Redis at {redact(url)} refused the database number of the URL's path (DB index is "
        "out of range): correct CLOUDBUNCH_REDIS_URL (--redis-url)")


async def test_a_refused_login_is_not_retried() -> None:
    """Redis with a user of its own (ACL), given a wrong password."""
    user = "cbtest" + secrets.token_hex(3)
    admin = RedisStore(REDIS_URL, "t")
    await admin._redis.execute_command("ACL", "SETUSER", user, "on", ">right", "+ping")
    parts = urlsplit(REDIS_URL)
    url = urlunsplit(parts._replace(netloc=f"{user}:wrong@{parts.hostname}:{parts.port or 6379}"))
    try:
        message = await refusal(url)
        assert message.startswith(f"Redis at redis://{user}:***@") and "refused the login (" \
            in message and message.endswith(": correct CLOUDBUNCH_REDIS_URL (--redis-url)")
        assert ":wrong@" not in message
    finally:
        await admin._redis.execute_command("ACL", "DELUSER", user)
        await admin.close()


@pytest.mark.parametrize("pipelines", [1, 4])
async def test_a_step_s_next_command_never_waits_for_a_finished_pipeline(
        store: RedisStore, monkeypatch: pytest.MonkeyPatch, pipelines: int) -> None:
    """A step woken by its commit's replies sends its next command at once. The flusher that
    woke it must not still count as running: with every pipeline slot held by finished
    flushers, that command waited for some other step to come along (forever, alone)."""
    monkeypatch.setattr(redis_store, "PIPELINES", pipelines)
    later = int(time.time() * 1000) + FAR

    async def steps() -> None:
        for version in range(5):
            assert await store.commit("s", version, b"r", append=[b"e"], expire_at_ms=later)
            await store.discard("s", [b"e"])

    async def busy() -> None:  # the other pipelines: finishing while the step runs
        for i in range(20):
            await store.commit(f"o{i}", 0, b"r", expire_at_ms=later)

    await asyncio.wait_for(asyncio.gather(steps(), *(busy() for _ in range(pipelines - 1))),
                           10)
    assert (await store.load("s")).version == 5


def _batch_sizes(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of commands of every batch the store's pipelines send from now on."""
    pipeliner = store._pipeliner
    assert pipeliner is not None
    sizes: list[int] = []
    exchange = pipeliner._exchange

    async def counting(commands: list[tuple[object, ...]]) -> list[object]:
        sizes.append(len(commands))
        return await exchange(commands)
    monkeypatch.setattr(pipeliner, "_exchange", counting)
    return sizes


async def test_concurrent_steps_share_pipelines(store: RedisStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit: the commands of 50 concurrent steps go out in a few pipelines."""
    executed = _batch_sizes(store, monkeypatch)
    later = int(time.time() * 1000) + FAR
    applied = await asyncio.gather(*(store.commit(f"s{i}", 0, b"r", append=[b"e"],
                                                  expire_at_ms=later, hint_ms=later)
                                     for i in range(50)))
    assert all(applied)
    assert 1 <= len(executed) <= 4, executed
    assert sum(executed) == 100  # a ZADD and a commit each, none lost
    snaps = await asyncio.gather(*(store.load(f"s{i}") for i in range(50)))
    assert [(s.version, s.outbox) for s in snaps] == [(1, [b"e"])] * 50


async def test_a_lone_step_sends_its_own_commands_on_a_kept_connection(
        store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps one at a time: each sends its commands itself (no flusher task), all on one
    connection of the pipeline's own, never one taken from redis-py's pool; and close()
    closes it."""
    pipeliner = store._pipeliner
    assert pipeliner is not None
    flushes = 0
    flush = pipeliner._flush

    async def counting() -> None:
        nonlocal flushes
        flushes += 1
        await flush()
    monkeypatch.setattr(pipeliner, "_flush", counting)
    pool = store._redis.connection_pool
    taken = 0
    get_connection = pool.get_connection

    async def counting_get(*args: object, **kwargs: object) -> object:
        nonlocal taken
        taken += 1
        return await get_connection(*args, **kwargs)
    monkeypatch.setattr(pool, "get_connection", counting_get)
    later = int(time.time() * 1000) + FAR
    for version in range(5):
        assert await store.commit("s", version, b"r", append=[b"e"], expire_at_ms=later)
        await store.discard("s", [b"e"])
        assert (await store.load("s")).version == version + 1
    assert (flushes, taken, len(pipeliner._all)) == (0, 0, 1)
    (connection,) = pipeliner._all
    assert connection.is_connected
    await store.close()
    assert not connection.is_connected


async def test_steps_woken_together_send_their_next_commands_together(
        store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight steps in lockstep: the replies of one batch wake them all, and their next
    commands go out in one batch again, not the first woken alone and the rest after it."""
    sizes = _batch_sizes(store, monkeypatch)
    later = int(time.time() * 1000) + FAR

    async def lane(session: str) -> None:
        for version in range(10):
            assert await store.commit(session, version, b"r", append=[b"e"],
                                      expire_at_ms=later)
            await store.discard(session, [b"e"])

    await asyncio.wait_for(asyncio.gather(*(lane(f"s{i}") for i in range(8))), 10)
    assert sum(sizes) == 160
    assert len(sizes) <= 25, sizes  # 20 rounds of 8; one alone at the start
