"""Service.handle (every action, default and failure path), load_service, and serve in memory."""

from __future__ import annotations

import asyncio
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from worker_sdk import KEEP, Context, MemoryBroker, Service, wire
from worker_sdk.errors import ActionError, ConfigError
from worker_sdk.service import load_service, run_services


def dispatch(event: str = "start", **fields: Any) -> wire.Dispatch:
    fields.setdefault("session", "s1")
    fields.setdefault("turn", "turn-0123456789abcdef")
    fields.setdefault("depth", 0)
    return wire.Dispatch(event=event, **fields)  # type: ignore[arg-type]


def result(service: str = "child", ok: bool = True, value: Any = None,
           code: str = "boom", message: str = "it broke") -> wire.Result:
    if ok:
        return wire.Result(service=service, ok=True, value=value)
    return wire.Result(service=service, ok=False, error=wire.ErrorInfo(code, message))


# ---------------------------------------------------------------------------- actions


async def test_reply_with_output_and_state() -> None:
    svc = Service("menu")

    @svc.on_start
    async def start(ctx: Context) -> None:
        ctx.reply("Hi!", "pizza or drinks?", state={"step": 1})

    reply = await svc.handle(dispatch("start"))
    assert reply.action == "reply"
    assert reply.output == ["Hi!", "pizza or drinks?"]
    assert reply.state == {"step": 1}
    assert reply.session == "s1" and reply.turn == "turn-0123456789abcdef"
    assert reply.to_wire()["state"] == {"step": 1}


async def test_reply_keeps_state_by_default_and_none_clears_it() -> None:
    svc = Service("s")

    @svc.on_message
    def message(ctx: Context) -> None:
        if ctx.payload == "clear":
            ctx.reply(state=None)
        else:
            ctx.reply("ok")

    kept = await svc.handle(dispatch("message", payload="x", state={"a": 1}))
    assert kept.state is KEEP
    assert "state" not in kept.to_wire()
    cleared = await svc.handle(dispatch("message", payload="clear", state={"a": 1}))
    assert cleared.to_wire()["state"] is None


async def test_say_accumulates_before_the_action() -> None:
    svc = Service("s")

    @svc.on_start
    def start(ctx: Context) -> None:
        ctx.say("one")
        ctx.say("two", "three")
        ctx.open("child", {"n": 1}, state={"waiting": True})

    reply = await svc.handle(dispatch())
    assert reply.action == "open"
    assert reply.output == ["one", "two", "three"]
    assert reply.service == "child" and reply.args == {"n": 1}
    assert reply.state == {"waiting": True}


async def test_open_without_state_keeps_it() -> None:
    svc = Service("s")
    svc.on_message(lambda ctx: ctx.open("child"))
    reply = await svc.handle(dispatch("message", payload="go", state=7))
    assert reply.action == "open" and reply.state is KEEP and reply.args is None
    assert "state" not in reply.to_wire()


async def test_close_returns_a_value() -> None:
    svc = Service("s")
    svc.on_message(lambda ctx: ctx.close({"total": 12}))
    reply = await svc.handle(dispatch("message", payload="done", state={"x": 1}))
    assert reply.action == "close" and reply.result == {"total": 12}
    assert "state" not in reply.to_wire()


async def test_replace_names_the_successor() -> None:
    svc = Service("s")
    svc.on_message(lambda ctx: ctx.replace("other", [1, 2]))
    reply = await svc.handle(dispatch("message", payload="x"))
    assert (reply.action, reply.service, reply.args) == ("replace", "other", [1, 2])


async def test_pass_on_message() -> None:
    svc = Service("s")
    svc.on_message(lambda ctx: ctx.pass_())
    reply = await svc.handle(dispatch("message", payload="help"))
    assert reply.action == "pass"


@pytest.mark.parametrize("event", ["start", "result"])
async def test_pass_outside_message_fails_the_turn(event: str) -> None:
    svc = Service("s")
    svc.on_start(lambda ctx: ctx.pass_())
    svc.on_result()(lambda ctx: ctx.pass_())
    reply = await svc.handle(dispatch(event, result=result() if event == "result" else None))
    assert reply.action == "fail"
    assert reply.error is not None and reply.error.code == "exception"
    assert reply.error.message.startswith("ActionError: ")


async def test_fail_with_code_and_message() -> None:
    svc = Service("s")
    svc.on_message(lambda ctx: ctx.fail("out_of_stock", "no pizza left"))
    reply = await svc.handle(dispatch("message", payload="pizza"))
    assert reply.action == "fail" and reply.error == wire.ErrorInfo("out_of_stock",
                                                                    "no pizza left")
    assert reply.to_wire()["error"] == {"code": "out_of_stock", "message": "no pizza left"}


async def test_two_actions_raise_action_error_and_fail_the_turn() -> None:
    svc = Service("s")
    seen: list[BaseException] = []

    @svc.on_message
    def message(ctx: Context) -> None:
        ctx.reply("first")
        try:
            ctx.close()
        except ActionError as exc:
            seen.append(exc)
            raise

    reply = await svc.handle(dispatch("message", payload="x"))
    assert isinstance(seen[0], ActionError)
    assert reply.action == "fail" and reply.error is not None
    assert reply.error.code == "exception" and "ActionError" in reply.error.message
    assert reply.output == []


async def test_context_exposes_the_dispatch_read_only() -> None:
    svc = Service("menu")
    captured: dict[str, Any] = {}

    @svc.on_result("order")
    def order_done(ctx: Context) -> None:
        captured.update(session=ctx.session, turn=ctx.turn, attempt=ctx.attempt,
                        depth=ctx.depth, event=ctx.event, state=ctx.state, args=ctx.args,
                        payload=ctx.payload, bubbled=ctx.bubbled, result=ctx.result,
                        meta=ctx.meta, service=ctx.service)

    res = result("order", value=3)
    await svc.handle(dispatch("result", attempt=2, depth=1, state={"s": 1}, result=res,
                              meta={"locale": "it"}))
    assert captured == {"session": "s1", "turn": "turn-0123456789abcdef", "attempt": 2,
                        "depth": 1, "event": "result", "state": {"s": 1}, "args": None,
                        "payload": None, "bubbled": False, "result": res,
                        "meta": {"locale": "it"}, "service": "menu"}
    ctx = Context(dispatch(), "menu")
    assert ctx.meta == {}
    with pytest.raises(AttributeError):
        ctx.state = 1  # type: ignore[misc]


# ---------------------------------------------------------------------------- defaults


async def test_handler_without_action_replies_with_said_output() -> None:
    svc = Service("s")
    svc.on_message(lambda ctx: ctx.say("echo", ctx.payload))
    reply = await svc.handle(dispatch("message", payload="hi", state={"k": 1}))
    assert reply.action == "reply" and reply.output == ["echo", "hi"] and reply.state is KEEP


async def test_no_start_handler_replies_without_output() -> None:
    reply = await Service("s").handle(dispatch("start", args={"a": 1}))
    assert reply.action == "reply" and reply.output == [] and reply.state is KEEP


async def test_no_message_handler_passes() -> None:
    reply = await Service("s").handle(dispatch("message", payload="x"))
    assert reply.action == "pass"


async def test_result_handlers_are_picked_by_child_name() -> None:
    svc = Service("s")
    svc.on_result("order")(lambda ctx: ctx.reply("order handler"))
    svc.on_result()(lambda ctx: ctx.reply("any handler"))
    named = await svc.handle(dispatch("result", result=result("order")))
    other = await svc.handle(dispatch("result", result=result("drinks")))
    assert named.output == ["order handler"]
    assert other.output == ["any handler"]


async def test_unmatched_ok_result_replies_keeping_state() -> None:
    svc = Service("s")
    svc.on_result("order")(lambda ctx: ctx.close())
    reply = await svc.handle(dispatch("result", state={"x": 1}, result=result("drinks")))
    assert reply.action == "reply" and reply.state is KEEP and reply.output == []


async def test_unmatched_failed_result_propagates_the_error() -> None:
    reply = await Service("s").handle(
        dispatch("result", result=result("child", ok=False, code="timeout", message="slow")))
    assert reply.action == "fail"
    assert reply.error == wire.ErrorInfo("timeout", "slow")


# ---------------------------------------------------------------------------- exceptions


async def test_exception_becomes_fail_and_drops_output(caplog: pytest.LogCaptureFixture) -> None:
    svc = Service("s")

    @svc.on_message
    async def message(ctx: Context) -> None:
        ctx.say("never sent")
        raise ValueError("bad\ninput")

    with caplog.at_level(logging.ERROR, logger="worker_sdk.service"):
        reply = await svc.handle(dispatch("message", payload="x"))
    assert reply.action == "fail" and reply.output == []
    assert reply.error == wire.ErrorInfo("exception", "ValueError: bad input")
    assert any(r.exc_info for r in caplog.records), "the traceback is logged"


async def test_unencodable_state_fails_the_turn() -> None:
    svc = Service("s")
    svc.on_start(lambda ctx: ctx.reply(state={1, 2}))
    reply = await svc.handle(dispatch())
    assert reply.action == "fail" and reply.error is not None
    assert reply.error.code == "exception" and reply.error.message.startswith("TypeError")


async def test_fail_needs_a_code() -> None:
    svc = Service("s")
    svc.on_start(lambda ctx: ctx.fail(""))
    reply = await svc.handle(dispatch())
    assert reply.error is not None and reply.error.message.startswith("ActionError")


def test_service_name_is_checked() -> None:
    with pytest.raises(ConfigError):
        Service("two words")


# ---------------------------------------------------------------------------- load_service


@pytest.fixture
def fake_module() -> Iterator[str]:
    name = "cb_fake_services_mod"
    module = types.ModuleType(name)
    module.menu = Service("menu")  # type: ignore[attr-defined]
    module.other = 42  # type: ignore[attr-defined]
    sys.modules[name] = module
    yield name
    del sys.modules[name]


def test_load_service(fake_module: str) -> None:
    assert load_service(f"{fake_module}:menu").name == "menu"


@pytest.mark.parametrize("spec, words", [
    ("no_colon", "MODULE:ATTRIBUTE"),
    ("cb_surely_missing_module:x", "no such module"),
    ("{mod}:missing", "has no attribute"),
    ("{mod}:other", "not a worker_sdk.Service"),
])
def test_load_service_errors(fake_module: str, spec: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_service(spec.format(mod=fake_module))


# ---------------------------------------------------------------------------- serve


async def test_serve_answers_on_replies_and_acks_after_publish() -> None:
    broker = MemoryBroker()
    await broker.connect()
    await router_side(broker)
    svc = Service("echo")
    svc.on_message(lambda ctx: ctx.reply(ctx.payload))
    stop = asyncio.Event()
    runner = asyncio.create_task(run_services([svc], broker, "ns", 4, stop))
    for _ in range(100):
        if await broker.consumer_count("ns.service.echo"):
            break
        await asyncio.sleep(0.01)
    body = wire.encode(dispatch("message", payload="hello", attempt=2).to_wire())
    assert await broker.publish([wire_out("ns.service.echo", body)]) == [True]
    assert await broker.publish([wire_out("ns.service.echo", b"\xc1garbage")]) == [True]
    for _ in range(100):
        if broker.messages("ns.replies"):
            break
        await asyncio.sleep(0.01)
    replies = [wire.Reply.from_wire(wire.decode(b)) for b in broker.messages("ns.replies")]
    assert [(r.action, r.output) for r in replies] == [("reply", ["hello"])]
    # The bad dispatch was acked (not requeued), so the service queue is empty.
    assert broker.messages("ns.service.echo") == []
    stop.set()
    await asyncio.wait_for(runner, 5)
    assert await broker.consumer_count("ns.service.echo") == 0
    await broker.close()


async def router_side(broker: MemoryBroker) -> None:
    """What the router declares for replies: NS.replies, bound to NS.x.replies."""
    await broker.declare("ns.replies")
    await broker.bind("ns.x.replies", "replies", "ns.replies")


async def serve_echo(broker: MemoryBroker, handler: Any) -> None:
    """Connect ``broker`` with the router's side declared, and serve service "echo" on it,
    one dispatch at a time, with ``handler`` for messages."""
    await broker.connect()
    await router_side(broker)
    svc = Service("echo")
    svc.on_message(handler)
    await svc.serve(broker, "ns", prefetch=1)


async def test_a_reply_the_broker_refuses_is_dropped_not_retried() -> None:
    broker = MemoryBroker()
    seen: list[str] = []
    await serve_echo(broker, lambda ctx: seen.append(ctx.turn))
    # A forged dispatch whose turn makes the reply's message id over 255 bytes.
    forged = wire.encode(dispatch("message", payload="x", turn="t" * 300).to_wire())
    await broker.publish([wire_out("ns.service.echo", forged)])
    for _ in range(200):
        if seen:
            break
        await asyncio.sleep(0.01)
    # Stopping waits for the handler, then hands back what it did not settle: nothing.
    await broker.cancel("ns.service.echo", drain=5)
    assert broker.messages("ns.service.echo") == []  # acknowledged, not handed back
    assert seen == ["t" * 300]
    assert broker.messages("ns.replies") == []
    await broker.close()


def wire_out(queue: str, body: bytes) -> Any:
    from worker_sdk.broker import Outgoing

    return Outgoing(queue, body, "m-" + str(len(body)))


async def test_dispatch_is_requeued_when_the_reply_publish_fails() -> None:
    from worker_sdk.errors import PublishFailed

    class FlakyBroker(MemoryBroker):
        failures = 1

        async def publish(self, messages: Any) -> list[bool]:
            if any(m.exchange == "ns.x.replies" for m in messages) and self.failures:
                self.failures -= 1
                raise PublishFailed("simulated lost connection")
            return await super().publish(messages)

    broker = FlakyBroker()
    seen: list[int] = []
    await serve_echo(broker, lambda ctx: seen.append(ctx.attempt))
    body = wire.encode(dispatch("message", payload="x").to_wire())
    await broker.publish([wire_out("ns.service.echo", body)])
    for _ in range(200):
        if broker.messages("ns.replies"):
            break
        await asyncio.sleep(0.01)
    # Not acknowledged after the failed publish: handled again, answered once.
    assert seen == [1, 1]
    assert len(broker.messages("ns.replies")) == 1
    assert broker.messages("ns.service.echo") == []
    await broker.close()
