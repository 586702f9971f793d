"""Fencing, deduplication and deadlines end to end (PROTOCOL.md guarantees 2, 4 and 6)."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import pytest

from .procs import Harness, eventually
from .test_e2e_actions import check, check_notice, deploy, open_b, start_root

pytestmark = pytest.mark.infra


async def test_stale_forged_and_wrong_session_replies_have_no_effect(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    first = await start_root(front, a, "s")
    await start_root(front, a, "other", state="o0")
    mid = await front.send("s", "go")
    d = await a.next()
    forged = dict(d, turn=secrets.token_urlsafe(16))
    await a.reply(forged, "reply", state="forged", output=["forged"])
    await a.reply(first, "reply", state="stale", output=["stale"])  # an answered turn
    await a.reply(dict(d, session="other"), "reply", state="wrong", output=["wrong session"])
    # A forged reply with another action must not open anything either.
    await a.reply(forged, "open", service="B")
    await asyncio.sleep(0.4)
    assert front.of(mid) == []
    assert await e2e.stack("s") == [("A", "a0")]
    assert await e2e.stack("other") == [("A", "o0")]
    rec = await e2e.record("s")
    assert rec is not None and rec.turn is not None and rec.turn.id == d["turn"]
    await b.expect_none(0.1)
    await a.reply(d, "reply", state="real", output=["real"])
    assert await front.outputs(mid, 1) == ["real"]
    await e2e.idle("s")
    assert await e2e.stack("s") == [("A", "real")]
    assert [n["payload"] for n in front.notices if n["type"] == "output"] == ["real"]


async def test_duplicated_reply_is_dropped(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    await start_root(front, a, "s")
    mid = await front.send("s", "go")
    d = await a.next()
    await a.reply(d, "reply", state="one", output=["one"])
    await a.reply(d, "reply", state="two", output=["two"])
    await a.reply(d, "open", service="B", output=["three"])
    notices = await front.wait(mid, 1, settle=0.4)
    assert [n["payload"] for n in notices] == ["one"]
    assert await e2e.stack("s") == [("A", "one")]
    await b.expect_none(0.1)


async def test_repeated_client_message_id_is_ignored(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A")
    a = s["A"]
    await start_root(front, a, "s")
    # Two copies at once, then a third after the chain ended.
    await front.send("s", "once", id="dup-1")
    await front.send("s", "once", id="dup-1")
    d = await a.next()
    check(d, "s", "message", 0, state="a0", payload="once")
    await a.reply(d, "reply", state="a1", output=["answer"])
    await front.wait("dup-1", 1)
    await a.expect_none(0.4)
    await front.send("s", "once more", id="dup-1")
    await a.expect_none(0.4)
    assert [n["payload"] for n in front.of("dup-1", dedup=False)] == ["answer"]
    assert await e2e.stack("s") == [("A", "a1")]
    # The same id in another session is another message.
    await front.send("s2", "x", id="dup-1")
    check(await a.next(), "s2", "start", 0, payload="x")


async def test_silent_service_is_redispatched_then_times_out(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B", turn_timeout=0.5, max_attempts=2)
    a, b = s["A"], s["B"]
    await start_root(front, a, "s")
    mid = await front.send("s", "go", meta={"m": 1})
    await a.reply(await a.next(), "open", service="B", args={"q": 1}, state="a1")
    first = await b.next()
    check(first, "s", "start", 1, args={"q": 1}, meta={"m": 1})
    started = time.monotonic()
    again = await b.next(timeout=3)
    waited = time.monotonic() - started
    check(again, "s", "start", 1, attempt=2, args={"q": 1}, meta={"m": 1})
    assert again["turn"] == first["turn"]
    assert 0.3 <= waited <= 2.0, waited
    d = await a.next(timeout=3)
    check(d, "s", "result", 0, state="a1", meta={"m": 1}, result=d["result"])
    assert d["result"]["service"] == "B" and d["result"]["ok"] is False
    assert d["result"]["error"]["code"] == "timeout"
    # The late reply of the timed-out turn is fenced off.
    await b.reply(first, "reply", output=["too late"])
    await a.reply(d, "reply", output=["B did not answer"])
    assert await front.outputs(mid, 1) == ["B did not answer"]
    await asyncio.sleep(0.3)
    assert [n["payload"] for n in front.of(mid)] == ["B did not answer"]
    assert await e2e.stack("s") == [("A", "a1")]


async def test_timeout_of_root_is_an_error_notice(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", turn_timeout=0.3, max_attempts=1)
    mid = await front.send("s", "hi")
    await s["A"].next()
    notices = await front.wait(mid, 1, timeout=3)
    check_notice(notices[0], "s", mid, "error")
    assert notices[0]["error"]["code"] == "timeout"


async def test_late_reply_after_end_is_fenced(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    await open_b(front, s, "s")
    await front.send("s", "go")
    d = await b.next()
    mid = await front.send("s", type="end")
    await front.wait(mid, 1)
    await b.reply(d, "reply", state="late", output=["late"])
    await asyncio.sleep(0.3)
    assert all(n.get("payload") != "late" for n in front.notices)
    assert await e2e.stack("s") == []
    await a.expect_none(0.1)


async def test_a_session_over_max_waiting_is_answered_busy(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", max_waiting=1)
    a = s["A"]
    await front.send("s", "one")
    first = await a.next()
    await front.send("s", "two")  # waits behind the chain in flight
    await eventually(_waiting(e2e, "s", 1), 5.0, "one message waiting")
    await front.send("s", "three", id="over")
    (notice,) = await front.wait("over", 1)
    check_notice(notice, "s", "over", "error")
    assert notice["error"]["code"] == "busy", notice
    rec = await e2e.record("s")
    assert rec is not None and [m.payload for m in rec.waiting] == ["two"]
    await a.reply(first, "reply", state="a1")
    second = await a.next()
    assert second["payload"] == "two", second
    await a.reply(second, "reply", state="a2")
    await e2e.idle("s")
    # Its id was not remembered: the same message, sent again, is taken.
    await front.send("s", "three", id="over")
    third = await a.next()
    assert (third["payload"], third["state"]) == ("three", "a2"), third


def _waiting(e2e: Harness, session: str, count: int) -> Any:
    async def check() -> bool:
        rec = await e2e.record(session)
        return rec is not None and len(rec.waiting) == count
    return check
