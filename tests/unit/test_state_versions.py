"""State versions: stamping, migration of older states, refusal of newer ones."""

from __future__ import annotations

from typing import Any

import pytest

from worker_sdk import Context, MemoryBroker, Service, versions, wire
from worker_sdk.errors import ConfigError


def dispatch(event: str = "message", state: Any = None, **fields: Any) -> wire.Dispatch:
    return wire.Dispatch(session="s1", turn="turn-0123456789abcdef", event=event,  # type: ignore[arg-type]
                         depth=0, state=state, **fields)


def order_v2() -> Service:
    svc = Service("order", state_version=2)

    @svc.migration(1)
    def split_name(state: dict[str, Any]) -> dict[str, Any]:
        first, _, last = state["name"].partition(" ")
        return {"first": first, "last": last}

    @svc.on_message
    def hello(ctx: Context) -> None:
        ctx.reply(f"Hello {ctx.state['first']}", state=ctx.state | {"seen": True})

    return svc


def test_wrap_unwrap_round_trip_and_plain_state_is_version_1() -> None:
    assert versions.unwrap({"name": "x"}) == (1, {"name": "x"})
    assert versions.unwrap(versions.wrap(3, [1, 2])) == (3, [1, 2])
    assert versions.wrap(1, {"a": 1}) == {"a": 1}
    # a user's map that merely looks similar is not taken for the wrapper
    assert versions.unwrap({versions.VERSION_KEY: True, versions.STATE_KEY: 1})[0] == 1


async def test_an_older_state_is_migrated_before_the_handler_and_saved_stamped() -> None:
    reply = await order_v2().handle(dispatch(state={"name": "Ada Lovelace"}))
    assert reply.output == ["Hello Ada"]
    assert reply.state == versions.wrap(2, {"first": "Ada", "last": "Lovelace", "seen": True})
    again = await order_v2().handle(dispatch(state=reply.state))  # current: only unwrapped
    assert again.output == ["Hello Ada"]
    assert again.state == reply.state


async def test_a_migrated_state_is_saved_even_when_the_handler_keeps_it() -> None:
    svc = order_v2()

    @svc.on_message
    def keep(ctx: Context) -> None:
        ctx.reply("kept")

    reply = await svc.handle(dispatch(state={"name": "Ada Lovelace"}))
    assert reply.state == versions.wrap(2, {"first": "Ada", "last": "Lovelace"})
    current = await svc.handle(dispatch(state=reply.state))
    assert current.state is wire.ABSENT


async def test_a_newer_state_is_never_handled_by_older_code() -> None:
    svc = Service("order")
    ran: list[Any] = []

    @svc.on_message
    def handler(ctx: Context) -> None:
        ran.append(ctx.state)

    reply = await svc.handle(dispatch(state=versions.wrap(2, {"first": "Ada"})))
    assert ran == []
    assert reply.action == "fail"
    assert reply.error is not None and reply.error.code == "state_too_new"
    assert "version 2" in reply.error.message


async def test_a_failing_migration_fails_the_turn_with_the_cause() -> None:
    svc = order_v2()
    reply = await svc.handle(dispatch(state={"no_name": 1}))
    assert reply.action == "fail"
    assert reply.error is not None and reply.error.code == "exception"
    assert "KeyError" in reply.error.message


async def test_start_has_no_state_to_migrate() -> None:
    svc = Service("form", state_version=3)

    @svc.on_start
    def start(ctx: Context) -> None:
        assert ctx.state is None
        ctx.reply("go", state={"step": 0})

    reply = await svc.handle(dispatch("start"))
    assert reply.state == versions.wrap(3, {"step": 0})


def test_gaps_in_migrations_are_refused_at_declaration() -> None:
    svc = Service("x", state_version=3)
    with pytest.raises(ConfigError, match="no migration from state version 2 to 3"):
        @svc.migration(1)
        def one(state: Any) -> Any:
            return state


async def test_a_state_older_than_the_oldest_migration_fails_clearly() -> None:
    svc = Service("x", state_version=3)

    @svc.migration(2)
    def two(state: Any) -> Any:
        return state

    reply = await svc.handle(dispatch(state={"plain": "version 1"}))
    assert reply.action == "fail" and reply.error is not None
    assert "no migration from state version 1 to 2" in reply.error.message


def test_a_migration_beyond_the_version_is_refused() -> None:
    svc = Service("x", state_version=2)
    with pytest.raises(ConfigError, match="does not lead"):
        @svc.migration(2)
        def two(state: Any) -> Any:
            return state


def test_bad_state_version_is_refused() -> None:
    with pytest.raises(ConfigError, match="state_version"):
        Service("x", state_version=0)


async def test_a_worker_hands_a_too_new_dispatch_back_then_fails_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from worker_sdk import service as service_module

    monkeypatch.setattr(service_module, "TOO_NEW_PAUSE", 0.0)
    monkeypatch.setattr(service_module, "TOO_NEW_REQUEUES", 3)
    broker = MemoryBroker()
    await broker.connect()
    svc = Service("order")
    await svc.serve(broker, "ns", prefetch=1)
    replies = wire.queue_names("ns")["replies"]
    got: list[bytes] = []

    async def collect(delivery: Any) -> None:
        got.append(delivery.body)
        await delivery.ack()

    await broker.consume(replies, collect, prefetch=10)
    body = wire.encode(dispatch(state=versions.wrap(2, {})).to_wire())
    await broker.publish([wire_outgoing(svc.queue("ns"), body)])
    for _ in range(200):
        if got:
            break
        await _tick()
    assert len(got) == 1
    reply = wire.Reply.from_wire(wire.decode(got[0]))
    assert reply.action == "fail" and reply.error is not None
    assert reply.error.code == "state_too_new"
    await broker.close()


def wire_outgoing(queue: str, body: bytes) -> Any:
    from worker_sdk.broker import Outgoing

    return Outgoing(queue, body, "m1")


async def _tick() -> None:
    import asyncio

    await asyncio.sleep(0.01)
