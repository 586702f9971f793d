"""The examples a newcomer copies, run as they are: the README's frontend script."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

import pytest

from router.store import DEFAULT_REDIS_URL

from .procs import QUEUE_TYPE, REPO, Harness, child_env, opened

pytestmark = pytest.mark.infra


@pytest.fixture
async def harness(request: pytest.FixtureRequest, namespace: str,
                  amqp_url: str) -> AsyncIterator[Harness]:
    redis_url = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)
    async with opened(Harness(namespace, amqp_url, redis_url), request.node) as made:
        yield made


async def test_the_readme_frontend_runs_the_tutorial(harness: Harness) -> None:
    h = harness
    await h.router("greeter")
    await h.worker("examples.tutorial:greeter", "examples.tutorial:ask_name")
    h.queues.add(f"{h.ns}.client.web")  # the example's durable reply queue, in its namespace
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.frontend", "tg:42", "hi", "help", "ada", "bye",
        cwd=str(REPO), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(CLOUDBUNCH_AMQP_URL=h.amqp_url, CLOUDBUNCH_NAMESPACE=h.ns,
                      CLOUDBUNCH_QUEUE_TYPE=QUEUE_TYPE))
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()
    assert out.decode().splitlines() == [
        "you: hi", "bot: Hello! What is your name?",
        "you: help", "bot: I ask your name so that I can greet you properly.",
        "you: ada", "bot: Nice to meet you, Ada!",
        "you: bye", "(end)",
    ]
