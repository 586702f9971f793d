"""``cloudbunch purge``: a namespace's queues and keys go, after a confirmation, and never
while a router serves it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from router.store import DEFAULT_REDIS_URL
from worker_sdk.amqp import AmqpBroker
from worker_sdk.client import Client

from .procs import REPO, Harness, Proc, child_env, cli, opened

pytestmark = pytest.mark.infra


@pytest.fixture
async def harness(request: pytest.FixtureRequest, namespace: str,
                  amqp_url: str) -> AsyncIterator[Harness]:
    redis_url = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)
    async with opened(Harness(namespace, amqp_url, redis_url), request.node) as made:
        yield made


async def purge(h: Harness, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *cli("purge", "--namespace", h.ns, "--amqp-url", h.amqp_url, "--redis-url",
             h.redis_url, *args), cwd=str(REPO), env=child_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def keys(h: Harness) -> int:
    return len([key async for key in h.store._redis.scan_iter(match=f"{h.ns}:*")])


async def test_purge_refuses_while_a_router_serves_then_deletes_after_yes(
        harness: Harness) -> None:
    h = harness
    router = await h.router("greeter")
    worker = await h.worker("examples.tutorial:greeter", "examples.tutorial:ask_name")
    broker = AmqpBroker(h.amqp_url, name="test-purge-client")
    await broker.connect()
    try:
        async with Client(broker, h.ns) as client:
            notices = await client.conversation("s1", "hi", settle=0.5)
            assert [n.payload for n in notices] == ["Hello! What is your name?"]
    finally:
        await broker.close()
    queues = [h.ingress, h.replies, h.dead, f"{h.ns}.service.greeter",
              f"{h.ns}.service.ask_name"]
    checker = AmqpBroker(h.amqp_url, name="test-purge-check")
    await checker.connect()
    try:
        await run_purges(h, router, worker, queues, checker)
    finally:
        await checker.close()


async def run_purges(h: Harness, router: Proc, worker: Proc, queues: list[str],
                     checker: AmqpBroker) -> None:
    async def existing() -> list[str]:
        return [q for q in queues if await checker.queue_exists(q)]

    code, out = await purge(h, "--yes")
    assert code == 1, out
    assert out.strip() == (f"cloudbunch purge: 1 consumer(s) on {h.ingress}: a router is "
                           f"serving namespace '{h.ns}'; stop every router of it first"), out
    assert await existing() == queues
    assert await keys(h) > 0

    assert await router.stop() == 0
    assert await worker.stop() == 0
    # No terminal to ask and no --yes: nothing happens.
    code, out = await purge(h)
    assert code == 1 and "pass --yes to confirm without a terminal" in out, out
    assert await keys(h) > 0

    assert await existing() == queues

    code, out = await purge(h, "--yes")
    assert code == 0, out
    assert "deleted 5 queue(s) and" in out, out
    assert await existing() == []
    assert await keys(h) == 0
