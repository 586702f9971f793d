"""The SDK side of idle timers: ``idle=`` on reply and open, ``@on_idle``, and the default."""

from __future__ import annotations

from typing import Any

import pytest

from worker_sdk import Context, Service, wire
from worker_sdk.errors import ActionError

from .test_service import dispatch


async def test_reply_and_open_carry_idle_on_the_wire() -> None:
    svc = Service("form")

    @svc.on_start
    def start(ctx: Context) -> None:
        ctx.reply("Size?", state={"step": 1}, idle=120)

    @svc.on_message
    def message(ctx: Context) -> None:
        ctx.open("payment", {"total": 3}, idle=900.5)

    reply = await svc.handle(dispatch("start"))
    assert reply.to_wire()["idle"] == 120 and reply.state == {"step": 1}
    reply = await svc.handle(dispatch("message", payload="x"))
    body = reply.to_wire()
    assert body["action"] == "open" and body["idle"] == 900.5
    assert wire.Reply.from_wire(body).idle == 900.5


@pytest.mark.parametrize("value", [None, 0])
async def test_no_idle_leaves_the_field_out(value: Any) -> None:
    svc = Service("s")

    @svc.on_start
    def start(ctx: Context) -> None:
        ctx.reply(idle=value)

    assert "idle" not in (await svc.handle(dispatch("start"))).to_wire()


@pytest.mark.parametrize("value", [-1, 2_592_001, "60", True, float("nan")])
async def test_a_bad_idle_is_an_action_error(value: Any) -> None:
    ctx = Context(dispatch("start"), "s")
    with pytest.raises(ActionError, match="idle must be a number of seconds"):
        ctx.reply(idle=value)


async def test_on_idle_gets_the_seconds_and_the_state() -> None:
    svc = Service("form")
    seen: list[Any] = []

    @svc.on_idle
    def idle(ctx: Context) -> None:
        seen.append((ctx.event, ctx.payload, ctx.state, ctx.bubbled))
        ctx.reply("Still there?", idle=60)

    reply = await svc.handle(dispatch("idle", payload=60, state={"step": 2}))
    assert seen == [("idle", 60, {"step": 2}, False)]
    assert reply.output == ["Still there?"] and reply.idle == 60


async def test_without_on_idle_the_state_is_kept_and_no_timer_set() -> None:
    svc = Service("form")
    reply = await svc.handle(dispatch("idle", payload=60, state={"step": 2}))
    body = reply.to_wire()
    assert body["action"] == "reply" and "state" not in body and "idle" not in body


async def test_pass_is_allowed_on_idle() -> None:
    svc = Service("form")

    @svc.on_idle
    def idle(ctx: Context) -> None:
        ctx.pass_()

    assert (await svc.handle(dispatch("idle", payload=5))).action == "pass"


async def test_idle_dispatch_round_trips_with_bubbled() -> None:
    d = dispatch("idle", payload=60, bubbled=True)
    again = wire.Dispatch.from_wire(wire.decode(wire.encode(d.to_wire())))
    assert again.event == "idle" and again.bubbled is True and again.payload == 60
