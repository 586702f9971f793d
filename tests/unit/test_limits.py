"""Limits that stop runaway flows, through the real core in memory."""

from __future__ import annotations

from router.testing import FlowTest
from worker_sdk import Context, Service


def _recursive() -> Service:
    loop = Service("loop")

    @loop.on_start
    def start(ctx: Context) -> None:
        ctx.open("loop", state={"depth": ctx.depth})  # opens itself forever

    @loop.on_result("loop")
    def refused(ctx: Context) -> None:
        assert ctx.result is not None
        if ctx.result.ok:
            ctx.close(ctx.result.value)
        elif ctx.result.error and ctx.result.error.code == "depth_exceeded":
            ctx.reply(f"stopped at depth {ctx.depth}")
        else:
            ctx.fail(ctx.result.error.code if ctx.result.error else "error")

    return loop


async def test_a_service_that_opens_itself_forever_hits_depth_exceeded() -> None:
    async with FlowTest([_recursive()], root="loop", max_depth=8) as flow:
        assert await flow.say("go") == ["stopped at depth 7"]
        assert await flow.stack() == ["loop"] * 8
        assert await flow.states() == [{"depth": d} for d in range(8)]


async def test_an_output_over_max_body_fails_the_frame_with_invalid_reply() -> None:
    big = Service("big")

    @big.on_start
    def start(ctx: Context) -> None:
        ctx.reply("x" * 5000)

    async with FlowTest([big], root="big", max_body=4096) as flow:
        assert await flow.say("go") == [
            "<error invalid_reply: body is 5069 bytes; max-body is 4096>"]
        assert await flow.stack() == []
