"""Idle timers (contract "Idle timers"), one rule or more per test, through the pure core."""

from __future__ import annotations

from typing import Any

import pytest

from router.core import Record
from worker_sdk import wire

from .core_harness import Harness


def idle_dispatches(h: Harness) -> list[dict[str, Any]]:
    return [d for d in h.dispatches() if d["event"] == "idle"]


def with_child(h: Harness, *, root_idle: Any = None, child_idle: Any = None) -> None:
    """root opens child; child answers its start: stack [root, child]."""
    h.send("hi", meta={"user": 1})
    h.answer("open", service="child", state="r", idle=root_idle)
    h.answer("reply", state="c", idle=child_idle)
    h.take()


def test_reply_sets_timer_that_fires_idle_with_payload_and_state() -> None:
    h = Harness()
    h.send("hi", meta={"lang": "fr"})
    h.answer("reply", state={"step": 1}, idle=60)
    h.take()
    h.tick(59_999)
    assert idle_dispatches(h) == [], "never early"
    h.tick(1)
    (d,) = idle_dispatches(h)
    assert d["_queue"] == "t.service.root" and d["depth"] == 0 and d["attempt"] == 1
    assert d["payload"] == 60 and d["state"] == {"step": 1} and d["bubbled"] is False
    assert d["meta"] == {"lang": "fr"}


def test_fractional_seconds_are_rounded_up_never_early() -> None:
    h = Harness()
    h.send()
    h.answer("reply", idle=0.0015)
    h.take()
    h.tick(1)
    assert idle_dispatches(h) == []
    h.tick(1)
    assert idle_dispatches(h)[0]["payload"] == 0.0015


def test_open_sets_the_openers_timer_while_the_child_runs() -> None:
    h = Harness()
    with_child(h, root_idle=900)
    h.tick(900_000)
    (d,) = idle_dispatches(h)
    assert d["depth"] == 0 and d["state"] == "r" and d["payload"] == 900


def test_silence_restarts_with_each_accepted_client_message() -> None:
    h = Harness()
    with_child(h, root_idle=10)
    h.tick(5_000)
    h.send("still here")  # a turn of the child, not of the root: the root keeps its timer
    h.answer("reply")
    h.take()
    h.tick(9_999)
    assert idle_dispatches(h) == [], "10 s of silence count from the last message"
    h.tick(1)
    assert idle_dispatches(h)[0]["depth"] == 0


def test_silence_counts_from_the_reply_when_it_came_after_the_message() -> None:
    h = Harness()
    h.send()
    h.tick(3_000)
    h.answer("reply", idle=10)  # set 3 s after the message
    h.take()
    h.tick(9_999)
    assert idle_dispatches(h) == []
    h.tick(1)
    assert len(idle_dispatches(h)) == 1


@pytest.mark.parametrize("fields", [{}, {"idle": 0}, {"idle": None}])
def test_next_reply_without_idle_drops_the_timer(fields: dict[str, Any]) -> None:
    h = Harness()
    h.send()
    h.answer("reply", idle=10)
    h.send()
    h.answer("reply", **fields)
    h.take()
    h.tick(100_000)
    assert idle_dispatches(h) == []
    assert h.record is not None and h.record.stack[0].timer is None


def test_a_new_idle_replaces_the_old_one() -> None:
    h = Harness()
    h.send()
    h.answer("reply", idle=10)
    h.send()
    h.answer("reply", idle=30)
    h.take()
    h.tick(10_000)
    assert idle_dispatches(h) == []
    h.tick(20_000)
    assert idle_dispatches(h)[0]["payload"] == 30


@pytest.mark.parametrize("value", [-1, 2_592_001, "10", True, [10], float("nan"),
                                   float("inf")])
def test_invalid_idle_is_invalid_reply(value: Any) -> None:
    h = Harness()
    h.send()
    h.take()
    h.answer("reply", idle=value, output=["not sent"])
    kinds = [(e.kind, e.headers.get("x-cb-reason")) for e in h.effects]
    assert ("dead", "invalid") in kinds
    assert h.said() == []
    (n,) = [n for n in h.notices() if n["type"] == "error"]
    assert n["error"]["code"] == "invalid_reply" and "idle" in n["error"]["message"]


def test_largest_idle_is_accepted() -> None:
    h = Harness()
    h.send()
    h.answer("reply", idle=2_592_000)
    assert h.record is not None and h.record.stack[0].timer is not None


@pytest.mark.parametrize("action,fields", [
    ("close", {"result": 1}), ("fail", {"error": {"code": "x"}}),
    ("replace", {"service": "other"})])
def test_idle_is_ignored_with_other_actions(action: str, fields: dict[str, Any]) -> None:
    h = Harness()
    with_child(h)
    h.send()
    h.answer(action, idle="not even checked", **fields)
    assert not [e for e in h.effects if e.kind == "dead"]
    assert all(f.timer is None for f in h.record.stack) if h.record else True


def test_pass_ignores_idle_and_leaves_no_timer() -> None:
    h = Harness()
    with_child(h, child_idle=10)
    h.send()
    h.answer("pass", idle=5)  # the child's turn ended with pass: its timer is gone
    h.answer("reply")
    h.take()
    h.tick(60_000)
    assert idle_dispatches(h) == []


def test_timer_fires_at_most_once() -> None:
    h = Harness()
    h.send()
    h.answer("reply", idle=1)
    h.tick(1_000)
    assert len(idle_dispatches(h)) == 1
    h.answer("reply")  # keeps no timer
    for _ in range(5):
        h.tick(1_000)
    assert len(idle_dispatches(h)) == 1


def test_fired_timer_is_not_queued_twice_while_it_waits() -> None:
    h = Harness(turn_timeout_ms=100_000)
    with_child(h, root_idle=10)
    h.send("long turn")  # the child's turn stays in flight
    h.take()
    h.tick(10_000)
    h.tick(1_000)
    h.tick(1_000)
    assert h.record is not None
    assert len([w for w in h.record.waiting if not isinstance(w, wire.ClientMessage)]) == 1


def test_fired_timer_waits_behind_chain_then_discards_frames_above() -> None:
    h = Harness(turn_timeout_ms=100_000)
    with_child(h, root_idle=10)
    h.send("long turn", id="m-long")
    h.tick(10_000)
    assert idle_dispatches(h) == [], "it waits behind the chain in flight"
    h.take()
    h.answer("reply", state="c2", output=["done"])
    (d,) = idle_dispatches(h)
    assert d["depth"] == 0 and d["state"] == "r"
    assert h.stack() == [("root", "r")], "the child was discarded"
    assert [x["event"] for x in h.dispatches()] == ["idle"], "no dispatch to the child"


def test_idle_turn_restarts_no_silence_and_carries_no_seq() -> None:
    h = Harness()
    h.send(seq=1)
    h.answer("open", service="child", idle=30)
    h.answer("reply", idle=10)
    h.take()
    h.tick(10_000)
    h.answer("reply", idle=10)  # the child's idle turn sets it again
    assert h.record is not None and h.record.last_seq == 1
    h.take()
    h.tick(20_000)
    (d,) = idle_dispatches(h)
    assert d["depth"] == 0, "the root's 30 s still count from the client message"


def test_message_accepted_after_firing_drops_it() -> None:
    h = Harness(turn_timeout_ms=100_000)
    with_child(h, root_idle=10)
    h.send("long turn")
    h.tick(10_000)  # fires, waits
    h.send("newer", id="m-new")  # accepted after it fired
    h.take()
    h.answer("reply")
    assert idle_dispatches(h) == []
    d = h.last_dispatch()
    assert d["event"] == "message" and d["payload"] == "newer" and d["depth"] == 1
    assert h.stack()[1][0] == "child"


def test_frame_that_had_a_turn_since_drops_it() -> None:
    h = Harness(turn_timeout_ms=100_000)
    with_child(h, root_idle=10)
    h.send("long turn")
    h.tick(10_000)
    h.answer("close", result="x")  # the root gets a result turn: it had a turn since
    h.take()
    h.answer("reply")
    assert idle_dispatches(h) == []
    assert h.record is not None and h.record.turn is None


def test_lowest_frame_fires_first_and_discards_the_frames_above() -> None:
    h = Harness()
    with_child(h, root_idle=10, child_idle=10)
    h.tick(10_000)
    (d,) = idle_dispatches(h)
    assert d["depth"] == 0
    assert h.stack() == [("root", "r")]
    h.answer("reply")
    h.tick(1_000)
    assert len(idle_dispatches(h)) == 1, "the child's timer went with its frame"


def test_upper_timer_due_first_fires_alone() -> None:
    h = Harness()
    with_child(h, root_idle=900, child_idle=60)
    h.tick(60_000)
    (d,) = idle_dispatches(h)
    assert d["depth"] == 1 and d["payload"] == 60
    h.answer("reply", output=["still there?"])
    assert h.stack() == [("root", "r"), ("child", "c")]
    h.take()
    h.tick(840_000)
    (d,) = idle_dispatches(h)
    assert d["depth"] == 0 and d["payload"] == 900


def test_pass_of_idle_bubbles_and_root_pass_ends_silently() -> None:
    h = Harness()
    with_child(h, child_idle=10)
    h.tick(10_000)
    h.take()
    h.answer("pass")
    (d,) = idle_dispatches(h)
    assert d["depth"] == 0 and d["bubbled"] is True and d["payload"] == 10 and d["state"] == "r"
    h.take()
    h.answer("pass")
    assert h.notices() == [], "no unhandled notice for an idle event"
    assert h.record is not None and h.record.turn is None and h.record.chain is None
    assert h.stack() == [("root", "r"), ("child", "c")]


def test_bubbled_idle_reply_below_keeps_frames_above() -> None:
    h = Harness()
    with_child(h, child_idle=10)
    h.tick(10_000)
    h.answer("pass")
    h.answer("reply", output=["are you there?"])
    assert h.stack() == [("root", "r"), ("child", "c")]


def test_bubbled_idle_close_below_discards_frames_above() -> None:
    h = Harness()
    with_child(h, child_idle=10)
    h.tick(10_000)
    h.answer("pass")
    h.take()
    h.answer("close", output=["order cancelled"])
    assert h.stack() == []
    assert [n["type"] for n in h.notices()] == ["output", "end"]


def test_notices_go_to_last_accepted_message() -> None:
    h = Harness()
    h.send("first", id="a", reply_to="fe-1")
    h.answer("reply", idle=10)
    h.send("second", id="b", reply_to="fe-2", meta={"m": 2})
    h.answer("reply", idle=10)
    h.take()
    h.tick(10_000)
    assert idle_dispatches(h)[0]["meta"] == {"m": 2}
    h.answer("close", output=["bye"])
    notices = h.notices()
    assert [n["type"] for n in notices] == ["output", "end"]
    assert {n["in_reply_to"] for n in notices} == {"b"}
    assert {e.queue for e in h.effects if e.kind == "notice"} == {"fe-2"}


def test_idle_turn_deadline_and_timeout_act_as_for_any_turn() -> None:
    h = Harness(max_attempts=2)
    with_child(h, child_idle=10)
    h.tick(10_000)
    h.tick(1_000)
    assert [d["attempt"] for d in idle_dispatches(h)] == [1, 2]
    h.take()
    h.tick(1_000)
    d = h.last_dispatch()
    assert d["event"] == "result" and d["result"]["error"]["code"] == "timeout"


def test_pass_on_start_or_result_is_still_invalid() -> None:
    h = Harness()
    h.send()
    h.answer("pass")
    (n,) = [n for n in h.notices() if n["type"] == "error"]
    assert "message or idle" in n["error"]["message"]


def test_popped_frame_loses_its_timer() -> None:
    h = Harness()
    with_child(h, child_idle=10)
    h.send()
    h.answer("close")
    h.answer("reply")
    h.take()
    h.tick(100_000)
    assert idle_dispatches(h) == []


def test_end_discards_timers() -> None:
    h = Harness()
    h.send()
    h.answer("reply", idle=10)
    h.send(type="end")
    h.take()
    h.tick(100_000)
    assert idle_dispatches(h) == []


def test_session_with_timer_does_not_expire_before_it_fires() -> None:
    h = Harness(session_ttl_ms=60_000)
    h.send()
    h.answer("reply", idle=86_400)
    assert h.record is not None
    assert h.record.due_ms(h.cfg) == h.now + 86_400_000
    assert h.record.expire_at_ms(h.cfg) > h.now + 86_400_000


def test_record_due_moves_with_silence() -> None:
    h = Harness()
    with_child(h, root_idle=100)
    assert h.record is not None
    first = h.record.due_ms(h.cfg)
    h.tick(50_000)
    h.send()
    h.answer("reply")
    assert h.record.due_ms(h.cfg) == first + 50_000  # type: ignore[operator]


def test_held_message_restarts_silence_only_when_accepted() -> None:
    h = Harness(seq_hold_ms=5_000)
    h.send(seq=1)
    h.answer("open", service="child", idle=10)
    h.answer("reply")
    h.take()
    h.tick(1_000)
    h.send("held", seq=3)  # waits for seq 2: not accepted yet
    h.tick(5_000)  # released (accepted) at +6 s: the root's silence restarts there
    assert h.last_dispatch()["payload"] == "held"
    h.answer("reply")
    h.take()
    h.tick(9_999)
    assert idle_dispatches(h) == []
    h.tick(1)
    assert len(idle_dispatches(h)) == 1


def test_timers_survive_the_stored_form() -> None:
    h = Harness(turn_timeout_ms=100_000)
    with_child(h, root_idle=10, child_idle=20)
    h.send()
    h.tick(10_000)
    assert h.record is not None
    again = Record.decode(h.record.encode())
    assert again.stack == h.record.stack and again.waiting == h.record.waiting
    assert again.last == h.record.last and again.accepted == h.record.accepted


# ---------------------------------------------------------------------------- the record codec


def test_record_is_keyed_and_versioned() -> None:
    h = Harness()
    h.send()
    assert h.record is not None
    raw = wire.decode_stored(h.record.encode())
    assert raw["V"] == 2 and isinstance(raw["t"], dict) and raw["t"]["id"] == h.turn_id


@pytest.mark.parametrize("blob", [
    b"\xc1", b"", wire.encode([1, 2, 3]), wire.encode({"V": 2}), wire.encode({"V": 99}),
    wire.encode({"V": 2, "s": "s1", "k": [{"n": "root"}], "t": None, "c": None, "w": [],
                 "h": [], "q": 0, "a": 0, "m": 0, "l": None, "lc": 0, "n": 0}),
    wire.encode({"V": 2, "s": 5, "k": [], "t": None, "c": None, "w": [], "h": [], "q": 0,
                 "a": 0, "m": 0, "l": None, "lc": 0, "n": 0}),
    wire.encode({"s": "s1", "k": [["root"]], "t": None, "c": None, "w": [], "h": [], "q": 0,
                 "a": 0}),
])
def test_corrupt_record_raises_corrupt_record(blob: bytes) -> None:
    from router.core import CorruptRecord

    with pytest.raises(CorruptRecord):
        Record.decode(blob)


def test_version_1_records_are_still_read() -> None:
    """A record written before the keyed codec (rolling upgrade) is read and stepped on."""
    state = wire.encode({"n": 1})
    body = {"v": 1, "session": "s1", "turn": "t" * 22, "event": "message", "depth": 0,
            "state": {"n": 1}, "payload": "hi", "bubbled": False}
    old = wire.encode({
        "s": "s1", "k": [["root", state]],
        "t": ["t" * 22, 0, "message", 2, 5_000, body, None, None],
        "c": ["m1", "fe", "hi", None], "w": [], "h": [], "q": 0, "a": 1_000, "m": 1_000})
    rec = Record.decode(old)
    assert rec.stack[0].state == {"n": 1} and rec.turn is not None
    assert rec.turn.attempt == 2 and rec.turn.dispatch.payload == "hi"
    assert Record.decode(rec.encode()).turn == rec.turn
