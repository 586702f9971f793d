"""bench.adapters: the single-process adapter micro-bench measures and leaves nothing behind."""

from __future__ import annotations

import os

import aio_pika
import pytest
from redis.asyncio import Redis

from bench import adapters
from router.store import DEFAULT_REDIS_URL

REDIS_URL = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)


async def test_amqp_cpu_per_message_is_measured_and_the_queue_deleted(
        amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    original = adapters.AmqpBroker.declare

    async def declare(self: adapters.AmqpBroker, queue: str) -> None:
        made.append(queue)
        await original(self, queue)
    monkeypatch.setattr(adapters.AmqpBroker, "declare", declare)
    cpu, wall = await adapters.amqp_cpu_per_message(amqp_url, "quorum", messages=60, lanes=4)
    assert 0 < cpu < 1_000_000 and 0 < wall < 1_000_000
    assert len(made) == 1
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(made[0], passive=True)
    finally:
        await connection.close()


async def test_redis_cpu_per_step_is_measured_and_the_keys_deleted() -> None:
    redis = Redis.from_url(REDIS_URL)
    try:
        before = {key async for key in redis.scan_iter(match="bench*")}
        cpu, wall = await adapters.redis_cpu_per_step(REDIS_URL, steps=60, lanes=4)
        assert 0 < cpu < 1_000_000 and 0 < wall < 1_000_000
        assert {key async for key in redis.scan_iter(match="bench*")} == before
    finally:
        await redis.aclose()
