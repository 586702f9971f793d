"""Every action end to end: a router process, raw services and a raw frontend played by the
test, checking the exact fields of each dispatch and notice (PROTOCOL.md, "Actions")."""

from __future__ import annotations

from typing import Any

import pytest

from .procs import Frontend, Harness, RawService

pytestmark = pytest.mark.infra

DISPATCH_FIELDS = {"v", "session", "turn", "event", "depth", "attempt", "state", "args",
                   "payload", "bubbled", "result", "meta"}
NOTICE_FIELDS = {"v", "session", "id", "in_reply_to", "type", "payload", "error"}
_ABSENT: Any = object()


async def deploy(e2e: Harness, *names: str, **options: Any) -> tuple[
        Frontend, dict[str, RawService]]:
    """Raw services ``names`` (the first is the root), one router, one frontend."""
    services = {name: await e2e.service(name) for name in names}
    await e2e.router(names[0], **options)
    return await e2e.frontend(), services


def check(d: dict[str, Any], session: str, event: str, depth: int, *, attempt: int = 1,
          state: Any = None, args: Any = _ABSENT, payload: Any = _ABSENT,
          bubbled: Any = _ABSENT, result: Any = _ABSENT, meta: Any = _ABSENT) -> None:
    """Assert a dispatch's fields exactly; an optional field left out must be absent or nil."""
    assert set(d) <= DISPATCH_FIELDS, d
    assert d["v"] == 1 and d["session"] == session, d
    assert isinstance(d["turn"], str) and len(d["turn"]) >= 16, d
    assert (d["event"], d["depth"], d["attempt"]) == (event, depth, attempt), d
    assert d.get("state") == state, d
    for name, want in (("args", args), ("payload", payload), ("result", result),
                       ("meta", meta)):
        assert d.get(name) == (None if want is _ABSENT else want), (name, d)
    if event == "message":
        assert d.get("bubbled", False) is (False if bubbled is _ABSENT else bubbled), d
    else:
        assert not d.get("bubbled"), d


def check_notice(n: dict[str, Any], session: str, msg_id: str, kind: str) -> None:
    assert set(n) <= NOTICE_FIELDS, n
    assert n["v"] == 1 and n["session"] == session, n
    assert isinstance(n["id"], str) and n["id"], n
    assert (n["in_reply_to"], n["type"]) == (msg_id, kind), n


async def start_root(front: Frontend, a: RawService, session: str,
                     state: Any = "a0") -> dict[str, Any]:
    """Open the root with a first message and let it reply; return its start dispatch."""
    await front.send(session, "hi")
    d = await a.next()
    await a.reply(d, "reply", state=state)
    await front.harness.idle(session)
    return d


async def test_reply_keeps_or_clears_state_and_first_start(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A")
    a = s["A"]
    mid = await front.send("s1", "hi", meta={"lang": "en"})
    d = await a.next()
    check(d, "s1", "start", 0, payload="hi", meta={"lang": "en"})
    await a.reply(d, "reply", state={"n": 1}, output=["o1", {"k": [1, 2]}])
    notices = await front.wait(mid, 2, settle=0.2)
    assert [n["payload"] for n in notices] == ["o1", {"k": [1, 2]}]
    for n in notices:
        check_notice(n, "s1", mid, "output")
    assert notices[0]["id"] != notices[1]["id"]
    turns = {d["turn"]}

    mid = await front.send("s1", "m2")
    d = await a.next()
    check(d, "s1", "message", 0, state={"n": 1}, payload="m2")
    turns.add(d["turn"])
    await a.reply(d, "reply")  # no state field: the saved state is kept
    await e2e.idle("s1")
    assert await e2e.stack("s1") == [("A", {"n": 1})]
    assert front.of(mid) == []

    await front.send("s1", "m3")
    d = await a.next()
    check(d, "s1", "message", 0, state={"n": 1}, payload="m3")
    turns.add(d["turn"])
    await a.reply(d, "reply", state=None)  # nil: cleared
    await front.send("s1", "m4")
    d = await a.next()
    check(d, "s1", "message", 0, state=None, payload="m4")
    turns.add(d["turn"])
    assert len(turns) == 4


async def test_open_then_close_returns_value_to_parent(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    await start_root(front, a, "s")
    mid = await front.send("s", "go", meta={"u": 7})
    d = await a.next()
    check(d, "s", "message", 0, state="a0", payload="go", meta={"u": 7})
    await a.reply(d, "open", service="B", args={"x": 1}, state="a1", output=["opening"])
    d = await b.next()
    check(d, "s", "start", 1, args={"x": 1}, meta={"u": 7})
    assert await e2e.stack("s") == [("A", "a1"), ("B", None)]
    await b.reply(d, "close", result={"val": 42}, output=["closing"], state="ignored")
    d = await a.next()
    check(d, "s", "result", 0, state="a1", meta={"u": 7},
          result={"service": "B", "ok": True, "value": {"val": 42}})
    await a.reply(d, "reply", output=["done"])
    assert await front.outputs(mid, 3) == ["opening", "closing", "done"]
    await e2e.idle("s")
    assert await e2e.stack("s") == [("A", "a1")]


async def test_replace_result_goes_to_original_parent(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B", "C")
    a, b, c = s["A"], s["B"], s["C"]
    await start_root(front, a, "s")
    await front.send("s", "go")
    await a.reply(await a.next(), "open", service="B", state="a1")
    d = await b.next()
    await b.reply(d, "replace", service="C", args="c-args", output=["to C"])
    d = await c.next()
    check(d, "s", "start", 1, args="c-args")
    await c.reply(d, "reply", state="c1")
    await e2e.idle("s")
    assert await e2e.stack("s") == [("A", "a1"), ("C", "c1")]
    mid = await front.send("s", "next")
    d = await c.next()
    check(d, "s", "message", 1, state="c1", payload="next")
    await c.reply(d, "close", result="cv")
    d = await a.next()
    check(d, "s", "result", 0, state="a1", result={"service": "C", "ok": True, "value": "cv"})
    await a.reply(d, "reply", output=["back"])
    assert await front.outputs(mid, 1) == ["back"]
    await b.expect_none(0.1)


async def open_b(front: Frontend, s: dict[str, RawService], session: str) -> None:
    """Stack [A a0, B b0]."""
    a, b = s["A"], s["B"]
    await start_root(front, a, session)
    await front.send(session, "open B")
    await a.reply(await a.next(), "open", service="B")
    await b.reply(await b.next(), "reply", state="b0")
    await front.harness.idle(session)


async def test_pass_then_digression_reply_keeps_frames_above(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    await open_b(front, s, "s")
    mid = await front.send("s", "help")
    d = await b.next()
    check(d, "s", "message", 1, state="b0", payload="help")
    await b.reply(d, "pass", output=["b says"], state="not saved on pass")
    d = await a.next()
    check(d, "s", "message", 0, state="a0", payload="help", bubbled=True)
    await a.reply(d, "reply", output=["help text"], state="a-helped")
    assert await front.outputs(mid, 2) == ["b says", "help text"]
    await e2e.idle("s")
    assert await e2e.stack("s") == [("A", "a-helped"), ("B", "b0")]
    await front.send("s", "answer")
    d = await b.next()
    check(d, "s", "message", 1, state="b0", payload="answer")


async def test_pass_then_lower_frame_open_discards_frames_above(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B", "C", "D")
    a, b, c, dd = s["A"], s["B"], s["C"], s["D"]
    await open_b(front, s, "s")
    await front.send("s", "deeper")
    await b.reply(await b.next(), "open", service="C", state="b1")
    await c.reply(await c.next(), "reply", state="c0")
    await e2e.idle("s")
    assert [f for f, _ in await e2e.stack("s")] == ["A", "B", "C"]
    await front.send("s", "cancel")
    await c.reply(await c.next(), "pass")
    d = await b.next()
    check(d, "s", "message", 1, state="b1", payload="cancel", bubbled=True)
    await b.reply(d, "pass")
    d = await a.next()
    check(d, "s", "message", 0, state="a0", payload="cancel", bubbled=True)
    await a.reply(d, "open", service="D", args="fresh", state="a2")
    d = await dd.next()
    check(d, "s", "start", 1, args="fresh")  # depth 1: B and C were discarded first
    await dd.reply(d, "reply", state="d0")
    await e2e.idle("s")
    assert await e2e.stack("s") == [("A", "a2"), ("D", "d0")]
    await b.expect_none(0.1)
    await c.expect_none(0.1)


async def test_root_pass_is_unhandled_and_stack_unchanged(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    await open_b(front, s, "s")
    mid = await front.send("s", {"text": "zzz"})
    await b.reply(await b.next(), "pass")
    d = await a.next()
    assert d["bubbled"] is True
    await a.reply(d, "pass", output=["hm"])
    notices = await front.wait(mid, 2, settle=0.2)
    assert [n["type"] for n in notices] == ["output", "unhandled"]
    check_notice(notices[1], "s", mid, "unhandled")
    assert notices[1]["payload"] == {"text": "zzz"}
    await e2e.idle("s")
    assert await e2e.stack("s") == [("A", "a0"), ("B", "b0")]
    await front.send("s", "again")
    check(await b.next(), "s", "message", 1, state="b0", payload="again")


async def test_fail_gives_parent_an_error_result(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    await open_b(front, s, "s")
    mid = await front.send("s", "pay")
    await b.reply(await b.next(), "fail", error={"code": "card_declined", "message": "no"},
                  output=["b fails"])
    d = await a.next()
    check(d, "s", "result", 0, state="a0",
          result={"service": "B", "ok": False,
                  "error": {"code": "card_declined", "message": "no"}})
    # A fail without a message: the parent sees message "".
    await a.reply(d, "open", service="B")
    d = await b.next()
    await b.reply(d, "fail", error={"code": "plain"})
    d = await a.next()
    assert d["result"] == {"service": "B", "ok": False,
                           "error": {"code": "plain", "message": ""}}
    await a.reply(d, "reply", output=["sorry"])
    assert await front.outputs(mid, 2) == ["b fails", "sorry"]


async def test_root_fail_sends_error_and_next_message_opens_new_root(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A")
    a = s["A"]
    await start_root(front, a, "s")
    mid = await front.send("s", "crash")
    await a.reply(await a.next(), "fail", error={"code": "boom", "message": "it broke"})
    notices = await front.wait(mid, 1, settle=0.3)
    assert len(notices) == 1  # no `end` follows an error
    check_notice(notices[0], "s", mid, "error")
    assert notices[0]["error"] == {"code": "boom", "message": "it broke"}
    await e2e.idle("s")
    assert await e2e.stack("s") == []
    await front.send("s", "hello again")
    check(await a.next(), "s", "start", 0, payload="hello again")


async def test_close_of_root_ends_the_session(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A")
    a = s["A"]
    await start_root(front, a, "s")
    mid = await front.send("s", "bye")
    await a.reply(await a.next(), "close", result="r", output=["goodbye"])
    notices = await front.wait(mid, 2, settle=0.2)
    assert [n["type"] for n in notices] == ["output", "end"]
    check_notice(notices[1], "s", mid, "end")
    assert await e2e.stack("s") == []
    await front.send("s", "back")
    check(await a.next(), "s", "start", 0, payload="back")


async def test_end_message_discards_stack(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    await open_b(front, s, "s")
    mid = await front.send("s", type="end")
    notices = await front.wait(mid, 1, settle=0.2)
    assert [n["type"] for n in notices] == ["end"]
    assert await e2e.stack("s") == []
    await s["B"].expect_none(0.1)


async def test_unknown_service_refusals(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    await start_root(front, a, "s")
    mid = await front.send("s", "open missing")
    await a.reply(await a.next(), "open", service="nosuch", state="saved", output=["trying"])
    d = await a.next()
    assert d["result"]["service"] == "nosuch" and d["result"]["ok"] is False, d
    assert d["result"]["error"]["code"] == "unknown_service", d
    check(d, "s", "result", 0, state="saved", result=d["result"])
    # A refused replace does not pop the frame that asked.
    await a.reply(d, "open", service="B", state="a1")
    d = await b.next()
    await b.reply(d, "replace", service="nosuch2", args=1)
    d = await b.next()
    check(d, "s", "result", 1, result=d["result"])
    assert d["result"]["service"] == "nosuch2" and d["result"]["ok"] is False
    assert d["result"]["error"]["code"] == "unknown_service"
    await b.reply(d, "reply", output=["still here"])
    assert await front.outputs(mid, 2) == ["trying", "still here"]
    await e2e.idle("s")
    assert await e2e.stack("s") == [("A", "a1"), ("B", None)]

    # A new session whose entry names a missing service: error notice, session gone.
    mid = await front.send("s2", "hi", entry="nosuch")
    notices = await front.wait(mid, 1, settle=0.2)
    assert len(notices) == 1
    check_notice(notices[0], "s2", mid, "error")
    assert notices[0]["error"]["code"] == "unknown_service"
    assert await e2e.stack("s2") == []
    await a.expect_none(0.1)


async def test_depth_exceeded(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B", "C", max_depth=2)
    b, c = s["B"], s["C"]
    await open_b(front, s, "s")
    mid = await front.send("s", "deeper")
    await b.reply(await b.next(), "open", service="C", state="b1")
    d = await b.next()
    check(d, "s", "result", 1, state="b1", result=d["result"])
    assert d["result"]["service"] == "C" and d["result"]["ok"] is False
    assert d["result"]["error"]["code"] == "depth_exceeded"
    await b.reply(d, "reply", output=["too deep"])
    assert await front.outputs(mid, 1) == ["too deep"]
    await c.expect_none(0.1)
    assert await e2e.stack("s") == [("A", "a0"), ("B", "b1")]
