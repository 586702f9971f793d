"""The examples a newcomer copies, run as they are: the README's frontend script."""

from __future__ import annotations

import asyncio
import sys

import pytest

from .procs import QUEUE_TYPE, REPO, Harness, child_env

pytestmark = pytest.mark.infra


async def test_the_readme_frontend_runs_the_tutorial(ops: Harness) -> None:
    h = ops
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
