"""How the Redis store classifies what redis-py lets through: an error of its connection layer
while a node dies under a connection (uvloop's closed transport, a connection another task
disconnected) is the store being unavailable (retried), never a router bug (which would
dead-letter the delivery being handled); the same error from elsewhere stays a bug."""

from __future__ import annotations

import os

import pytest
import redis

from router.redis_store import RedisStore
from router.store import StoreUnavailable

CONNECTION_PY = os.path.join(os.path.dirname(redis.__file__), "asyncio", "connection.py")


def _raise_in_connection_layer(error: BaseException) -> None:
    """Raise ``error`` from a frame whose file is redis-py's connection module."""
    code = compile("def send(error):\n    raise error\n", CONNECTION_PY, "exec")
    namespace: dict[str, object] = {}
    exec(code, namespace)
    namespace["send"](error)  # type: ignore[operator]


@pytest.mark.parametrize("error", [
    RuntimeError("unable to perform operation on <TCPTransport closed=True reading=False "
                 "0x7f>; the handler is closed"),
    AttributeError("'NoneType' object has no attribute 'writelines'"),
])
async def test_a_connection_layer_fault_is_the_store_unavailable(error: Exception) -> None:
    store = RedisStore("redis+cluster://127.0.0.1:1,127.0.0.1:2/0", "t")  # no I/O here
    try:
        with pytest.raises(StoreUnavailable, match=r"^Redis is not reachable at "):
            async with store._guard():
                _raise_in_connection_layer(error)
        with pytest.raises(type(error)):
            async with store._guard():
                raise type(error)(*error.args)  # the router's own code: a bug
    finally:
        await store.close()
