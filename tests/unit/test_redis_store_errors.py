"""How the Redis store classifies what redis-py lets through: a write to a socket that closed
under it (a Redis node killed) is the store being unavailable (retried), never a router bug
(which would dead-letter the delivery being handled)."""

from __future__ import annotations

import pytest

from router.redis_store import RedisStore
from router.store import StoreUnavailable


async def test_a_closed_transport_is_the_store_unavailable() -> None:
    store = RedisStore("redis+cluster://127.0.0.1:1,127.0.0.1:2/0", "t")  # no I/O here
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True "
                          "reading=False 0x7f>; the handler is closed")
    with pytest.raises(StoreUnavailable, match=r"^Redis is not reachable at .*handler is closed"):
        async with store._guard():
            raise closed
    with pytest.raises(RuntimeError, match="a bug"):
        async with store._guard():
            raise RuntimeError("a bug")
    await store.close()
