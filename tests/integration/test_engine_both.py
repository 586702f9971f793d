"""Scenarios run twice: on the in-memory broker and store, and on RabbitMQ and Redis.

The in-memory adapters back the demo's embedded mode and the test kit; these tests show they
behave like the real ones by running the same flows through both and comparing what a person
would see.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from router.config import RouterConfig
from router.demo_flow import SERVICES
from router.engine import Engine
from router.redis_store import RedisStore
from worker_sdk import Context, Service, wire
from worker_sdk.amqp import AmqpBroker
from worker_sdk.quick_replies import plain_text

pytestmark = pytest.mark.infra

SCRIPT = Path(__file__).parents[2] / "router" / "demo_script.txt"

EngineFactory = Callable[..., Any]


@pytest.fixture(params=["memory", "real"])
def make_engine(request: pytest.FixtureRequest, namespace: str, amqp_url: str) -> EngineFactory:
    redis_url = "redis://127.0.0.1:6379/0"

    @asynccontextmanager
    async def factory(services: list[Service], **options: Any) -> AsyncIterator[Engine]:
        config = RouterConfig(namespace=namespace, amqp_url=amqp_url, redis_url=redis_url,
                              **options)
        if request.param == "memory":
            engine = Engine(services, config)
        else:
            engine = Engine(services, config, broker=AmqpBroker(amqp_url, config.queue_type),
                            store=RedisStore(redis_url, namespace))
        await engine.start()
        try:
            yield engine
        finally:
            await engine.stop()
            if request.param == "real":
                await _cleanup(amqp_url, redis_url, namespace, services)

    return factory


async def _cleanup(amqp_url: str, redis_url: str, namespace: str,
                   services: list[Service]) -> None:
    broker = AmqpBroker(amqp_url)
    await broker.connect()
    names = wire.queue_names(namespace)
    for queue in [*names.values(), *(wire.service_queue(namespace, s.name) for s in services)]:
        await broker.delete(queue)
    await broker.close()
    store = RedisStore(redis_url, namespace)
    await store.delete_namespace()
    await store.close()


def _text(n: wire.Notice) -> str:
    if n.type == "output":
        return plain_text(n.payload)
    return n.error.code if n.error else ""


def _shown(notices: list[wire.Notice]) -> list[str]:
    return [f"{n.type}:{_text(n)}" for n in notices]


async def test_pizza_script_reads_the_same(make_engine: EngineFactory) -> None:
    lines = [ln.strip() for ln in SCRIPT.read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    transcript: list[str] = []
    async with make_engine(SERVICES, root="pizza") as engine:
        for line in lines:
            transcript.append(f"> {line}")
            transcript.extend(_shown(await engine.converse("s1", line)))
        assert (await engine.record("s1")).stack == []  # type: ignore[union-attr]
    text = "\n".join(transcript)
    assert "declined" in text and "confirmed" in text and "cancelled" in text
    # The help digression in the middle of the address form, then the form goes on.
    help_at = transcript.index("> help", transcript.index("> cola"))
    assert transcript[help_at + 1].startswith("output:I take pizza orders")
    assert transcript[help_at + 3] == "> 12 Baker Street"
    assert "card number" in transcript[help_at + 4]
    assert transcript[-1] == "end:"
    # Both modes are held to one reference transcript.
    assert text + "\n" == Path(__file__).with_name("pizza_transcript.txt").read_text()


def _opener(target: str) -> list[Service]:
    parent = Service("parent")
    child = Service("slow")

    @parent.on_start
    def start(ctx: Context) -> None:
        ctx.open(target, {"x": 1}, state={"asked": target})

    @parent.on_result()
    def result(ctx: Context) -> None:
        assert ctx.result is not None
        code = ctx.result.error.code if ctx.result.error else "ok"
        ctx.reply(f"{ctx.result.service}:{code}:{ctx.state['asked']}")

    @child.on_start
    async def never(ctx: Context) -> None:
        await asyncio.sleep(3600)

    return [parent, child]


async def test_unknown_service_is_refused(make_engine: EngineFactory) -> None:
    async with make_engine(_opener("ghost"), root="parent") as engine:
        notices = await engine.converse("s1", "go")
        assert _shown(notices) == ["output:ghost:unknown_service:ghost"]
        assert [f.service for f in (await engine.record("s1")).stack] == ["parent"]  # type: ignore[union-attr]


async def test_silent_service_times_out(make_engine: EngineFactory) -> None:
    async with make_engine(_opener("slow"), root="parent", turn_timeout=0.3,
                           max_attempts=2) as engine:
        notices = await engine.converse("s1", "go", timeout=10)
        assert _shown(notices) == ["output:slow:timeout:slow"]


async def test_unknown_entry_fails_session(make_engine: EngineFactory) -> None:
    async with make_engine(_opener("ghost"), root="parent") as engine:
        notices = await engine.converse("s1", "go", entry="nowhere")
        assert _shown(notices) == ["error:unknown_service"]
        again = await engine.converse("s1", "go")
        assert _shown(again) == ["output:ghost:unknown_service:ghost"]
