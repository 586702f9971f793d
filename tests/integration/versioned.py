"""Two releases of one service, for the rolling-redeploy test (state versions).

``counter_v1`` keeps ``{"count": N}`` (state version 1); ``counter_v2`` keeps ``{"n": N}`` as
state version 2 and migrates older states. Both answer ``vK:N`` to each message, N counting
the messages the session has had, so the test sees which release handled each turn and
that no count was lost or applied twice. Each handler appends a line to the file named by
``VERSIONED_LOG``: the release and the stored state version it was given, so the test can
check that no release ever handled a state it does not know.
"""

from __future__ import annotations

import asyncio
import os

from worker_sdk import Context, Service

counter_v1 = Service("counter")
counter_v2 = Service("counter", state_version=2)


def _log(release: int, ctx: Context, known: bool) -> None:
    path = os.environ.get("VERSIONED_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{release} {ctx.session} {ctx.turn} {'known' if known else 'UNKNOWN'}\n")


@counter_v1.on_start
def _v1_start(ctx: Context) -> None:
    ctx.reply("v1:0", state={"count": 0})


@counter_v2.on_start
def _v2_start(ctx: Context) -> None:
    ctx.reply("v2:0", state={"n": 0})


@counter_v1.on_message
async def _v1_message(ctx: Context) -> None:
    known = isinstance(ctx.state, dict) and set(ctx.state) == {"count"}
    _log(1, ctx, known)
    await asyncio.sleep(0.01)
    if ctx.payload == "bye":
        ctx.close(ctx.state["count"])
        return
    count = ctx.state["count"] + 1
    ctx.reply(f"v1:{count}", state={"count": count})


@counter_v2.migration(1)
def _v1_to_v2(state: dict[str, int]) -> dict[str, int]:
    return {"n": state["count"]}


@counter_v2.on_message
async def _v2_message(ctx: Context) -> None:
    known = isinstance(ctx.state, dict) and set(ctx.state) == {"n"}
    _log(2, ctx, known)
    await asyncio.sleep(0.01)
    if ctx.payload == "bye":
        ctx.close(ctx.state["n"])
        return
    n = ctx.state["n"] + 1
    ctx.reply(f"v2:{n}", state={"n": n})
