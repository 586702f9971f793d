"""Bad bodies on NS.ingress and NS.replies go to NS.dead unchanged, with their headers, and
nothing else stops (PROTOCOL.md guarantee 8)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from .procs import Frontend, Harness, RawService, pack
from .test_e2e_actions import check, check_notice, deploy, open_b, start_root

pytestmark = pytest.mark.infra

MAX_BODY = 1024


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def dead(e2e: Harness, body: bytes, reason: str, queue: str) -> None:
    """Assert ``body`` reached NS.dead unchanged with the headers of guarantee 8."""
    letter = await e2e.dead_letter(body)
    headers = {k: text(v) for k, v in letter.headers.items()}
    assert headers.get("x-cb-reason") == reason, headers
    assert headers.get("x-cb-source-queue") == queue, headers
    detail = headers.get("x-cb-detail", "")
    assert detail and "\n" not in detail, headers


async def still_works(front: Frontend, a: RawService, n: int) -> str:
    """Another session goes on meanwhile; return the id of the message it handled."""
    mid = await front.send("bystander", f"ping {n}")
    d = await a.next()
    assert d["session"] == "bystander", d
    await a.reply(d, "reply", output=[f"pong {n}"])
    assert await front.outputs(mid, 1) == [f"pong {n}"]
    return mid


async def test_bad_client_messages(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", max_body=MAX_BODY)
    a = s["A"]
    await e2e.watch_dead()
    await start_root(front, a, "s")
    await start_root(front, a, "bystander")
    valid = front.body("s", "x", id="m-bad")

    # undecodable: no notice even when a session could be guessed
    garbage = b"\xc1" + os.urandom(63)
    trailing = pack(valid) + b"\x00"
    for body in (garbage, trailing):
        await e2e.publish(e2e.ingress, body)
        await dead(e2e, body, "undecodable", e2e.ingress)
    seen = await still_works(front, a, 1)

    # Validity is judged before dedup: an invalid copy of a seen id is still dead-lettered.
    body = pack(dict(front.body("bystander", "again", id=seen), v=2))
    await e2e.publish(e2e.ingress, body)
    await dead(e2e, body, "invalid", e2e.ingress)
    notices = await front.wait(seen, 2)
    check_notice(notices[1], "bystander", seen, "error")
    assert notices[1]["error"]["code"] == "invalid_message"

    # invalid, with session and reply_to: an invalid_message notice too
    cases: list[tuple[dict[str, Any], str]] = [
        (dict(valid, v=2), "m-bad"),
        ({k: v for k, v in valid.items() if k != "id"}, ""),
        (dict(valid, id=17), ""),
        (dict(valid, seq="1"), "m-bad"),
        (dict(valid, type="shout"), "m-bad"),
    ]
    for body_map, in_reply_to in cases:
        body = pack(body_map)
        before = len(front.notices)
        await e2e.publish(e2e.ingress, body)
        await dead(e2e, body, "invalid", e2e.ingress)
        await _wait_new(front, before)
        notice = front.notices[before]
        check_notice(notice, "s", in_reply_to, "error")
        assert notice["error"]["code"] == "invalid_message", notice
    await still_works(front, a, 2)

    # invalid without a usable reply_to or session: dead letter only
    before = len(front.notices)
    for body in (pack([1, 2, 3]), pack({k: v for k, v in valid.items() if k != "reply_to"}),
                 pack(dict(valid, session="x" * 257))):
        await e2e.publish(e2e.ingress, body)
        await dead(e2e, body, "invalid", e2e.ingress)

    # too large, checked first: a decodable one still gets its notice
    big = pack(dict(valid, id="m-big", payload="y" * (MAX_BODY * 2)))
    await e2e.publish(e2e.ingress, big)
    await dead(e2e, big, "too_large", e2e.ingress)
    big_garbage = b"\xc1" * (MAX_BODY + 1)
    await e2e.publish(e2e.ingress, big_garbage)
    await dead(e2e, big_garbage, "too_large", e2e.ingress)
    notices = await front.wait("m-big", 1)
    assert notices[0]["error"]["code"] == "invalid_message"
    await asyncio.sleep(0.2)
    assert len(front.notices) == before + 1, front.notices[before:]
    await still_works(front, a, 3)

    # None of it touched the session, and no dispatch was caused.
    assert await e2e.stack("s") == [("A", "a0")]
    await a.expect_none(0.1)


async def _wait_new(front: Frontend, before: int, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if len(front.notices) > before:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("no notice came")


async def test_bad_replies(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B", max_body=MAX_BODY)
    a, b = s["A"], s["B"]
    await e2e.watch_dead()
    await start_root(front, a, "bystander")
    await open_b(front, s, "s")

    # Not routable to a turn: dead-lettered.
    garbage = b"\xc1" + os.urandom(40)
    no_turn = pack({"v": 1, "session": "s", "action": "reply"})
    not_map = pack("reply")
    big_no_turn = pack({"v": 1, "action": "reply", "output": ["z" * (MAX_BODY * 2)]})
    for body, reason in ((garbage, "undecodable"), (no_turn, "invalid"), (not_map, "invalid"),
                         (big_no_turn, "too_large")):
        await e2e.publish(e2e.replies, body)
        await dead(e2e, body, reason, e2e.replies)
    await still_works(front, a, 1)

    # For a turn not in flight: dropped whatever its content, never dead-lettered.
    stale_big = pack({"v": 1, "session": "s", "turn": "t" * 22, "action": "reply",
                      "output": ["z" * (MAX_BODY * 2)]})
    stale_bad = pack({"v": 9, "session": "s", "turn": "t" * 22, "action": "dance"})
    for body in (stale_big, stale_bad):
        await e2e.publish(e2e.replies, body)

    # For the turn in flight: the frame fails with invalid_reply; its output is not sent.
    mid = await front.send("s", "go")
    d = await b.next()
    bad = pack({"v": 1, "session": "s", "turn": d["turn"], "action": "dance",
                "output": ["never"]})
    await e2e.publish(e2e.replies, bad)
    await dead(e2e, bad, "invalid", e2e.replies)
    r = await a.next()
    check(r, "s", "result", 0, state="a0", result=r["result"])
    assert r["result"]["service"] == "B" and r["result"]["ok"] is False
    assert r["result"]["error"]["code"] == "invalid_reply"
    await a.reply(r, "open", service="B", state="a1")
    d = await b.next()
    big = pack({"v": 1, "session": "s", "turn": d["turn"], "action": "reply",
                "output": ["w" * (MAX_BODY * 2)]})
    await e2e.publish(e2e.replies, big)
    await dead(e2e, big, "too_large", e2e.replies)
    r = await a.next()
    assert r["result"]["error"]["code"] == "invalid_reply", r
    await a.reply(r, "reply", output=["recovered"])
    assert await front.outputs(mid, 1) == ["recovered"]
    await still_works(front, a, 2)
    await asyncio.sleep(0.2)
    bodies = {letter.body for letter in e2e.dead_letters}
    assert stale_big not in bodies and stale_bad not in bodies

    # pass on a start event is invalid too; at the root, the session fails with an error.
    mid = await front.send("new", "hi")
    d = await a.next()
    await a.reply(d, "pass", output=["never"])
    notices = await front.wait(mid, 1, settle=0.2)
    assert len(notices) == 1 and notices[0]["type"] == "error", notices
    assert notices[0]["error"]["code"] == "invalid_reply"
