"""bench.adapters: the single-process adapter micro-bench measures and leaves nothing behind."""

from __future__ import annotations

import os
from typing import Any

import aio_pika
import pytest
from redis.asyncio import Redis

from bench import adapters, compare
from bench.compare import REPO
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


def test_against_a_base_each_side_runs_its_own_adapters(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        amqp_url: str) -> None:
    """--base: both sides run alternately, each with its tree's router on the path, and
    the results file has both sides and their paired ratios."""
    written: list[dict[str, Any]] = []
    monkeypatch.setattr(compare, "write_results",
                        lambda kind, report: written.append({"kind": kind, **report}))
    sides: list[str] = []
    run_side = adapters._run_side

    def recording(tree: Any, args: Any) -> dict[str, Any]:
        sides.append(tree.name)
        return run_side(tree, args)
    monkeypatch.setattr(adapters, "_run_side", recording)
    assert adapters.main(["--base", str(REPO), "--lanes", "1", "--messages", "20", "--runs",
                          "2", "--amqp-url", amqp_url, "--redis-url", REDIS_URL]) == 0
    assert sides == compare.order(2)
    (report,) = written
    assert report["kind"] == "adapters" and report["plan"]["lanes"] == 1
    figures = report["figures"]
    for key, _ in adapters.FIGURES:
        assert len(figures[key]["runs"]) == 2 and figures[key]["median"] > 0
        assert len(figures[f"base_{key}"]["runs"]) == 2
        assert figures[f"vs_base_{key}"]["median"] > 0
    assert "Redis step (commit + discard): client CPU per step" in capsys.readouterr().out


def test_a_base_that_is_no_commit_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert adapters.main(["--base", "no-such-commit"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m bench.adapters: no commit 'no-such-commit'")
