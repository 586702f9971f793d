"""What the router does with a session record it cannot read: the delivery is dead-lettered
(reason ``internal``) and acknowledged, the record is left for an operator, other sessions go
on; the scanner drops such a session's hint instead of firing it forever."""

from __future__ import annotations

from router.app import Router
from router.config import RouterConfig
from router.core import Record
from router.store import MemoryStore
from worker_sdk import Context, MemoryBroker, Service, wire
from worker_sdk.broker import Outgoing


async def test_a_corrupt_record_dead_letters_its_delivery_and_others_go_on() -> None:
    memory = MemoryBroker()
    store = MemoryStore()
    router = Router(RouterConfig(root="root", namespace="c"), memory, store, scan=False)
    root = Service("root")

    @root.on_start
    def start(ctx: Context) -> None:
        ctx.reply("hello", idle=1)

    await router.start()
    await memory.declare("fe")
    await root.serve(memory, "c")
    try:
        await store.commit("broken", 0, b"\x81\xa1V\x02", expire_at_ms=2**50, hint_ms=0)
        msg = wire.ClientMessage("broken", "m1", "fe", payload="hi")
        body = wire.encode(msg.to_wire())
        await memory.publish([Outgoing("c.ingress", body, "m1")])
        await memory.join(5)
        assert memory.messages("c.dead") == [body]
        [headers] = memory.headers("c.dead")
        assert headers["x-cb-reason"] == "internal"
        assert "CorruptRecord" in headers["x-cb-detail"]
        assert memory.messages("c.ingress") == [], "acknowledged, not requeued"
        snap = await store.load("broken")
        assert snap.record == b"\x81\xa1V\x02", "left as it was, for an operator"
        # The scanner drops its hint rather than firing it again and again.
        assert await router.fire_due() == 1
        assert store.next_due_ms() is None
        assert router.stats["corrupt_records"] == 1
        # Another session is served at once.
        fine = wire.ClientMessage("fine", "m2", "fe", payload="hi")
        await memory.publish([Outgoing("c.ingress", wire.encode(fine.to_wire()), "m2")])
        await memory.join(5)
        notices = [wire.Notice.from_wire(wire.decode(b)) for b in memory.messages("fe")]
        assert [(n.session, n.payload) for n in notices] == [("fine", "hello")]
        record = await store.load("fine")
        assert record.record is not None and Record.decode(record.record).stack[0].timer
    finally:
        await router.stop(grace=1)
        await memory.close()


def test_session_show_describes_a_frames_timer() -> None:
    from router.cli import describe_timer
    from router.core import Timer

    line = describe_timer(Timer(60, 1_000_000, "t"), 1_030_000, 1_050_000)
    assert line.startswith("idle timer: 60 s of silence, fires at 1970-01-01T00:18:10.000")
    assert "(in 40.0 s, unless a message arrives)" in line
    assert "fired" in describe_timer(Timer(60, 0, "t", fired=True), 0, 0)
