"""One batch of commands on a pooled redis-py connection: one write, then its replies.

The group commit (:class:`router.redis_store._Pipeliner`) sends every batch through
:func:`send_and_read`. With hiredis installed (the ``fast`` extra), on RESP2 or RESP3, the
batch is packed by hiredis in C, written as one buffer, and its replies are taken from hiredis's
reader under one timeout for the whole batch: redis-py's own path packs in Python, writes a
list of chunks, and arms a timeout and runs its checks for every reply. A RESP3 push message
between the replies goes to the parser's push handler, as redis-py does. Without hiredis,
redis-py's own calls do it.

Either way a failure leaves no half-read connection behind: on anything but a complete
batch the connection is closed, so its next user connects afresh, and the errors are
redis-py's (``ConnectionError``, ``TimeoutError``), which its retry policy knows.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:
    from hiredis import pack_command
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
except ImportError:  # pragma: no cover - the fast extra is not installed
    pack_command = None  # type: ignore[assignment]


async def send_and_read(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` in one write on ``connection`` and read their replies, an error
    reply as its exception object (not raised)."""
    if pack_command is None or not isinstance(connection._parser, _AsyncHiredisParser):
        return await _portable(connection, commands)
    if not connection.is_connected:
        await connection.connect()
    try:
        async with asyncio.timeout(connection.socket_timeout):
            return await _direct(connection, commands)
    except BaseException as error:
        await connection.disconnect(nowait=True)
        if isinstance(error, TimeoutError):
            raise RedisTimeoutError("Timeout reading from Redis") from None
        if isinstance(error, OSError):
            raise RedisConnectionError(f"Error while talking to Redis: {error}") from error
        raise


async def _direct(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    writer = connection._writer
    writer.write(b"".join([pack_command(command) for command in commands]))
    await writer.drain()
    stream = connection._reader
    parser = connection._parser
    reader = parser._reader
    size = parser._read_size
    push = parser._hiredis_PushNotificationType  # None before hiredis 3.2
    replies: list[Any] = []
    while len(replies) < len(commands):
        reply = reader.gets()
        if reply is NOT_ENOUGH_DATA:
            data = await stream.read(size)
            if not data:
                raise RedisConnectionError("Connection closed by server.")
            reader.feed(data)
            continue
        if isinstance(reply, RedisConnectionError):  # LOADING and the like: retried
            raise reply
        if push is not None and isinstance(reply, push):
            await parser.handle_push_response(reply)
            continue
        replies.append(reply)
    return replies


async def _portable(connection: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    await connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await connection.read_response())
        except ResponseError as error:  # read: the next reply is intact
            replies.append(error)
    return replies
