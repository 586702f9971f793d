"""One batch of commands on a pooled connection (router/redis_batch.py), both ways.

Each test runs on the hiredis path (the ``fast`` extra) and on redis-py's portable path,
and checks what the group commit relies on: replies in order with error replies as values,
and no connection left half read by a failure or a cancellation.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from router import redis_batch
from router.redis_batch import send_and_read
from router.store import DEFAULT_REDIS_URL

pytestmark = pytest.mark.infra

REDIS_URL = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture(params=["hiredis-resp3", "hiredis-resp2", "portable"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Redis]:
    parser, protocol = {"hiredis-resp3": (_AsyncHiredisParser, 3),
                        "hiredis-resp2": (_AsyncHiredisParser, 2),
                        "portable": (_AsyncRESP2Parser, 2)}[request.param]
    client = Redis.from_url(REDIS_URL, parser_class=parser, protocol=protocol,
                            socket_timeout=1)
    await client.ping()  # fails (not skips) the test when Redis is down
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def key(client: Redis) -> AsyncIterator[str]:
    name = "t" + secrets.token_hex(4) + ":batch"
    try:
        yield name
    finally:
        await client.delete(name)


async def _batch(client: Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    connection: Any = await client.connection_pool.get_connection()
    try:
        return await send_and_read(connection, commands)
    finally:
        await client.connection_pool.release(connection)


async def test_the_store_s_connections_take_the_hiredis_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fast extra, a client made as the store makes it never reads through
    redis-py's per-reply path (without hiredis this module would silently fall back)."""
    assert redis_batch.pack_command is not None
    client = Redis.from_url(REDIS_URL)
    try:
        connection: Any = await client.connection_pool.get_connection()

        async def portable(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("read through redis-py's per-reply path")
        monkeypatch.setattr(connection, "read_response", portable)
        assert await send_and_read(connection, [("ECHO", "a"), ("ECHO", "b")]) == [b"a", b"b"]
        await client.connection_pool.release(connection)
    finally:
        await client.aclose()


async def test_replies_come_in_order_with_error_replies_as_values(
        client: Redis, key: str) -> None:
    replies = await _batch(client, [
        ("SET", key, b"\x00\xff binary"),
        ("EVALSHA", "0" * 40, 0),  # an unknown script: NOSCRIPT
        ("INCR", key),  # not an integer: an error reply
        ("GET", key),
        ("RPUSH", key + ":list", "a", 1, 2.5),
        ("LRANGE", key + ":list", 0, -1),
        ("DEL", key + ":list"),
    ])
    assert replies[0] in (b"OK", True)
    assert isinstance(replies[1], NoScriptError)
    assert isinstance(replies[2], ResponseError)
    assert replies[3] == b"\x00\xff binary"
    assert replies[4] == 3
    assert replies[5] == [b"a", b"1", b"2.5"]
    assert replies[6] == 1


async def test_a_big_batch_is_read_across_many_socket_reads(client: Redis, key: str) -> None:
    value = secrets.token_bytes(200_000)
    replies = await _batch(client, [("SET", key, value)] + [("GET", key)] * 20)
    assert replies[1:] == [value] * 20


async def test_a_timeout_closes_the_connection_and_says_so_in_redis_terms(
        client: Redis, key: str) -> None:
    connection: Any = await client.connection_pool.get_connection()
    try:
        with pytest.raises(RedisTimeoutError):
            # BLPOP on an empty list waits 3 s: longer than the socket timeout (1 s).
            await send_and_read(connection, [("BLPOP", key, 3), ("PING",)])
        assert not connection.is_connected
        # The next batch on it connects afresh and reads its own replies, not BLPOP's nil.
        assert await send_and_read(connection, [("ECHO", "mine")]) == [b"mine"]
    finally:
        await client.connection_pool.release(connection)


async def test_a_cancelled_batch_leaves_no_half_read_connection(
        client: Redis, key: str) -> None:
    connection: Any = await client.connection_pool.get_connection()
    try:
        task = asyncio.create_task(send_and_read(connection, [("BLPOP", key, 1)]))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not connection.is_connected
        await client.rpush(key, "late")  # what BLPOP would have answered, had it waited
        assert await send_and_read(connection, [("LPOP", key)]) == [b"late"]
    finally:
        await client.connection_pool.release(connection)
