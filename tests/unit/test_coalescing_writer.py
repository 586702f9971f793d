"""The AMQP transport's writer: the frames of one event-loop turn in one write, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from worker_sdk.amqp_connect import _CoalescingWriter


class FakeWriter:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.drained = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        self.drained += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return f"info {name}"


async def test_writes_of_one_turn_are_joined_in_order() -> None:
    fake = FakeWriter()
    writer = _CoalescingWriter(fake)  # type: ignore[arg-type]
    for part in (b"a", b"b", b"c"):
        writer.write(part)
    assert fake.writes == []  # nothing until the loop turns
    await asyncio.sleep(0)
    assert fake.writes == [b"abc"]
    writer.write(b"d")
    await asyncio.sleep(0)
    assert fake.writes == [b"abc", b"d"]


async def test_drain_and_close_send_what_is_pending_first() -> None:
    fake = FakeWriter()
    writer = _CoalescingWriter(fake)  # type: ignore[arg-type]
    writer.write(b"x")
    await writer.drain()
    assert fake.writes == [b"x"] and fake.drained == 1
    writer.write(b"y")
    writer.close()
    assert fake.writes == [b"x", b"y"] and fake.closed
    writer.write(b"z")  # after close: dropped, as a closed transport would
    await asyncio.sleep(0)
    assert fake.writes == [b"x", b"y"]
    assert writer.get_extra_info("peername") == "info peername"
