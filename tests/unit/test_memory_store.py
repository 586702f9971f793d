"""The in-memory session store against the shared store contract."""

from __future__ import annotations

import time

import pytest

from router.store import MemoryStore
from tests.store_contract import StoreContract


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.seconds = 1_700_000_000.0

    def time(self) -> float:
        return self.seconds

    def now_ms(self) -> int:
        return int(self.seconds * 1000)

    async def advance(self, ms: int) -> None:
        self.seconds += ms / 1000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock.time)


class TestMemoryStore(StoreContract):
    """Every contract case, in process."""


async def test_expiry_follows_the_clock_to_the_millisecond(store: MemoryStore,
                                                           clock: FakeClock) -> None:
    assert await store.commit("s", 0, b"r", expire_at_ms=clock.now_ms() + 1000)
    await clock.advance(1000)
    assert (await store.load("s")).version == 1  # alive through its expiry millisecond
    await clock.advance(1)
    assert (await store.load("s")).version == 0
    assert await store.ttl_ms("s") == -2


async def test_default_clock_is_wall_time() -> None:
    store = MemoryStore()
    assert await store.commit("s", 0, b"r", expire_at_ms=int(time.time() * 1000) + 60_000)
    assert 50_000 < await store.ttl_ms("s") <= 60_000
