"""The web history on Redis: numbering, dedup, trimming, expiry, channel messages."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from router.channels.web.history import RedisHistory
from router.redis_store import RedisStore
from router.store import DEFAULT_REDIS_URL
from tests.integration.procs import eventually
from worker_sdk.errors import ConfigError

from ..unit.test_web_history import Ear

pytestmark = pytest.mark.infra

URL = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture
async def history(namespace: str) -> AsyncIterator[RedisHistory]:
    store = RedisStore(URL, namespace)
    history = RedisHistory(URL, namespace, keep=3, ttl=60)
    await history.start()
    try:
        yield history
    finally:
        await history.close()
        await store.delete_namespace()
        await store.close()


async def test_numbered_once_per_key_trimmed_and_expiring(history: RedisHistory,
                                                          namespace: str) -> None:
    first = await history.append("web:a", "c:m1", '{"t":1}', client=True)
    again = await history.append("web:a", "c:m1", '{"t":1}', client=True)
    notice = await history.append("web:a", "n:x", '{"t":2}')
    assert (first.seq, first.client_seq, first.new) == (1, 1, True)
    assert (again.seq, again.client_seq, again.new) == (1, 1, False)
    assert (notice.seq, notice.client_seq, notice.new) == (2, 0, True)
    for i in range(3):
        await history.append("web:a", f"n:{i}", f'{{"i":{i}}}')
    assert [seq for seq, _ in await history.after("web:a", 0)] == [3, 4, 5]
    assert await history.after("web:a", 4) == [(5, '{"i":2}')]
    # The message sent again long after its entry was trimmed still gets a client seq.
    late = await history.append("web:a", "c:m1", '{"t":1}', client=True)
    assert (late.seq, late.new) == (1, False) and late.client_seq == 2
    redis = Redis.from_url(URL)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{namespace}:web:*")]
        assert len(keys) == 3
        for key in keys:
            assert 0 < await redis.pttl(key) <= 60_000
    finally:
        await redis.aclose()


async def test_listeners_hear_entries_and_takeovers(history: RedisHistory) -> None:
    ear = Ear()
    await history.listen("web:b", ear)
    await history.append("web:b", "n:1", '{"x":1}')
    await history.announce("web:b", "conn9")
    await eventually(lambda: bool(ear.entries and ear.takeovers), 10, "channel messages")
    assert ear.entries == [(1, '{"x":1}')] and ear.takeovers == ["conn9"]
    await history.unlisten("web:b", ear)


def test_a_cluster_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="one Redis server"):
        RedisHistory("redis+cluster://127.0.0.1:7000", "cb")
