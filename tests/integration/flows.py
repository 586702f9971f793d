"""Services run by the end-to-end tests in real worker processes.

``root`` hands each message to a ``step`` child (which sleeps a little, like real work, and
returns the text upper-cased) and then answers ``VALUE#N``, N counting the messages it
handled, kept in its state. So every message has one exact expected output and the final
state says how many were applied.
"""

from __future__ import annotations

import asyncio
import os

from worker_sdk import Context, Service

STEP_SLEEP = float(os.environ.get("FLOWS_STEP_SLEEP", "0.02"))

root = Service("root")
step = Service("step")


@root.on_start
def _root_start(ctx: Context) -> None:
    # A new session's first frame gets the first message as its start payload.
    if ctx.payload is not None:
        ctx.open("step", ctx.payload, state=0)
    else:
        ctx.reply(state=0)


@root.on_message
def _root_message(ctx: Context) -> None:
    if ctx.payload == "bye":
        ctx.close(ctx.state)
    else:
        ctx.open("step", ctx.payload)


@root.on_result("step")
def _root_result(ctx: Context) -> None:
    assert ctx.result is not None and ctx.result.ok, ctx.result
    count = (ctx.state or 0) + 1
    ctx.reply(f"{ctx.result.value}#{count}", state=count)


@step.on_start
async def _step_start(ctx: Context) -> None:
    await asyncio.sleep(STEP_SLEEP)
    ctx.close(str(ctx.args).upper())
