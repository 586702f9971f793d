"""Every rule of the contract that the pure core decides, one test (or more) each."""

from __future__ import annotations

import pytest

from router.core import ClientArrived, Record, step
from worker_sdk import wire

from .core_harness import Harness


def test_first_message_opens_root_with_start_and_payload() -> None:
    h = Harness()
    h.send("hello", meta={"lang": "en"})
    d = h.last_dispatch()
    assert d["_queue"] == "t.service.root"
    assert d["event"] == "start" and d["depth"] == 0 and d["attempt"] == 1
    assert d["payload"] == "hello" and d["state"] is None and d["meta"] == {"lang": "en"}
    assert len(d["turn"]) >= 16 or d["turn"].startswith("id")
    assert h.stack() == [("root", None)]


def test_entry_opens_named_service_only_for_new_session() -> None:
    h = Harness()
    h.send("x", entry="faq")
    assert h.last_dispatch()["_queue"] == "t.service.faq"
    h.answer("reply", state=1)
    h.send("y", entry="other")
    assert h.last_dispatch()["_queue"] == "t.service.faq"
    assert h.last_dispatch()["event"] == "message"


def test_an_empty_entry_names_the_service_called_empty_not_the_root() -> None:
    # PROTOCOL.md: `entry` is a str, "the service to open"; only an absent (nil) one means
    # the root. "" names a service whose queue (`NS.service.`) nobody declares: the broker
    # returns the start, and the new session fails with unknown_service, as for any other.
    h = Harness()
    h.send("x", entry="")
    assert h.last_dispatch()["_queue"] == "t.service."
    h.take()
    h.returned()
    assert h.notices()[-1]["type"] == "error"
    assert h.notices()[-1]["error"]["code"] == "unknown_service"
    assert h.stack() == []


def test_reply_saves_state_sends_output_and_ends_chain() -> None:
    h = Harness()
    h.send("hi")
    h.take()
    h.answer("reply", state={"n": 1}, output=["a", "b"])
    assert h.stack() == [("root", {"n": 1})]
    notices = h.notices()
    assert [n["payload"] for n in notices] == ["a", "b"]
    assert all(n["in_reply_to"] == "m1" and n["type"] == "output" for n in notices)
    assert h.record is not None and h.record.turn is None and h.record.chain is None


def test_reply_without_state_keeps_state_and_nil_clears_it() -> None:
    h = Harness()
    h.send()
    h.answer("reply", state={"keep": True})
    h.send()
    h.answer("reply")
    assert h.stack() == [("root", {"keep": True})]
    h.send()
    h.answer("reply", state=None)
    assert h.stack() == [("root", None)]


def test_message_goes_to_top_with_its_state() -> None:
    h = Harness()
    h.send()
    h.answer("reply", state=7)
    h.send("next")
    d = h.last_dispatch()
    assert d["event"] == "message" and d["state"] == 7 and d["payload"] == "next"
    assert d["bubbled"] is False


def test_open_pushes_child_and_starts_it_with_args() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="child", args={"a": 1}, state="parent-state", output=["wait"])
    assert h.stack() == [("root", "parent-state"), ("child", None)]
    d = h.last_dispatch()
    assert d["_queue"] == "t.service.child" and d["event"] == "start"
    assert d["depth"] == 1 and d["args"] == {"a": 1} and d["state"] is None
    kinds = [e.kind for e in h.effects]
    assert kinds.index("notice") < kinds.index("dispatch", 1), "output goes before the dispatch"


def test_close_pops_and_returns_result_to_parent() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="child", state=1)
    h.answer("close", result={"pizza": "margherita"})
    assert h.stack() == [("root", 1)]
    d = h.last_dispatch()
    assert d["event"] == "result" and d["depth"] == 0 and d["state"] == 1
    assert d["result"] == {"service": "child", "ok": True, "value": {"pizza": "margherita"}}


def test_close_of_root_sends_end_and_empties_stack() -> None:
    h = Harness()
    h.send()
    h.answer("close", output=["bye"])
    assert h.stack() == []
    assert [n["type"] for n in h.notices()] == ["output", "end"]
    h.send("again")
    assert h.last_dispatch()["event"] == "start", "a new root opens"


def test_replace_swaps_frame_and_result_goes_to_original_parent() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="order", state="p")
    h.answer("replace", service="checkout", args=5)
    assert h.stack() == [("root", "p"), ("checkout", None)]
    d = h.last_dispatch()
    assert d["_queue"] == "t.service.checkout" and d["depth"] == 1 and d["args"] == 5
    h.answer("close", result="paid")
    assert h.last_dispatch()["result"] == {"service": "checkout", "ok": True, "value": "paid"}


def test_fail_pops_and_parent_gets_error_result() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="pay")
    h.answer("fail", error={"code": "card_declined"})
    assert h.last_dispatch()["result"] == {
        "service": "pay", "ok": False, "error": {"code": "card_declined", "message": ""}}


def test_fail_of_root_sends_error_and_session_is_gone_then_new_root() -> None:
    h = Harness()
    h.send()
    h.answer("fail", error={"code": "boom", "message": "bad"})
    notices = h.notices()
    assert notices[-1]["type"] == "error" and notices[-1]["error"] == {"code": "boom",
                                                                        "message": "bad"}
    assert "end" not in [n["type"] for n in notices]
    assert h.stack() == []
    h.send("again", id="later")
    assert h.last_dispatch()["event"] == "start"


def test_pass_bubbles_to_frame_below_with_its_state() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="form", state="root-state")
    h.answer("reply", state="form-state")
    h.send("help")
    h.answer("pass")
    d = h.last_dispatch()
    assert d["depth"] == 0 and d["bubbled"] is True and d["payload"] == "help"
    assert d["state"] == "root-state" and d["event"] == "message"


def test_digression_reply_below_keeps_frames_above() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="form", state="r")
    h.answer("reply", state="f")
    h.send("help")
    h.answer("pass")
    h.answer("reply", output=["help text"])
    assert h.stack() == [("root", "r"), ("form", "f")]
    h.send("street 1")
    assert h.last_dispatch()["depth"] == 1, "the form goes on"


@pytest.mark.parametrize("action,fields,expect", [
    ("close", {"result": 1}, [("root", "r")]),
    ("open", {"service": "other"}, [("root", "r"), ("a", None), ("other", None)]),
    ("replace", {"service": "other"}, [("root", "r"), ("other", None)]),
])
def test_other_action_below_discards_frames_above(action: str, fields: dict, expect: list) -> None:
    h = Harness()
    h.send()
    h.answer("open", service="a", state="r")
    h.answer("open", service="b")
    h.answer("reply")
    h.send("cancel")
    h.answer("pass")  # b -> a
    h.take()
    h.answer(action, **fields)
    if action == "close":
        # a closed: result goes to root; b was discarded without a dispatch.
        d = h.last_dispatch()
        assert d["result"]["service"] == "a" and d["depth"] == 0
        assert [x["_queue"] for x in h.dispatches()] == ["t.service.root"]
    assert h.stack() == expect


def test_root_pass_is_unhandled_and_stack_unchanged() -> None:
    h = Harness()
    h.send()
    h.answer("reply", state=3)
    h.send({"text": "???"})
    h.take()
    h.answer("pass", output=["hmm"])
    notices = h.notices()
    assert [n["type"] for n in notices] == ["output", "unhandled"]
    assert notices[-1]["payload"] == {"text": "???"}
    assert h.stack() == [("root", 3)] and h.record is not None and h.record.chain is None


@pytest.mark.parametrize("event_setup", ["start", "result"])
def test_pass_on_start_or_result_is_invalid_reply(event_setup: str) -> None:
    h = Harness()
    h.send()
    if event_setup == "result":
        h.answer("open", service="c")
        h.answer("close")
    h.take()
    h.answer("pass", output=["never shown"])
    dead = [e for e in h.effects if e.kind == "dead"]
    assert dead and dead[0].headers["x-cb-reason"] == "invalid"
    assert "never shown" not in h.said()
    assert h.stack() == []  # the root failed
    assert h.notices()[-1]["error"]["code"] == "invalid_reply"


def test_invalid_reply_fails_frame_and_dead_letters_copy() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="c", state="p")
    h.take()
    h.answer("explode", output=["x"])
    d = h.last_dispatch()
    assert d["result"]["ok"] is False and d["result"]["error"]["code"] == "invalid_reply"
    assert d["result"]["service"] == "c"
    dead = next(e for e in h.effects if e.kind == "dead")
    assert dead.queue == "t.dead" and dead.headers["x-cb-source-queue"] == "t.replies"
    assert "action" in dead.headers["x-cb-detail"]
    assert h.said() == []


def test_depth_exceeded_refuses_open_and_keeps_asking_frame_state() -> None:
    h = Harness(max_depth=2)
    h.send()
    h.answer("open", service="a")
    h.answer("open", service="b", state="a-state")
    assert h.stack() == [("root", None), ("a", "a-state")]
    d = h.last_dispatch()
    assert d["event"] == "result" and d["depth"] == 1 and d["state"] == "a-state"
    assert d["result"]["service"] == "b" and d["result"]["error"]["code"] == "depth_exceeded"


def test_depth_limit_is_counted_after_discard() -> None:
    h = Harness(max_depth=2)
    h.send()
    h.answer("open", service="a")
    h.answer("reply")
    h.send("x")
    h.answer("pass")  # a -> root at depth 0; opening from root makes depth 1: allowed
    h.answer("open", service="b")
    assert h.stack() == [("root", None), ("b", None)]


def test_unknown_service_on_open_is_refusal() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="ghost", state="kept")
    h.take()
    h.returned()
    assert h.stack() == [("root", "kept")]
    d = h.last_dispatch()
    assert d["event"] == "result" and d["result"]["service"] == "ghost"
    assert d["result"]["error"]["code"] == "unknown_service"


def test_unknown_service_on_replace_keeps_the_frame() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="a", state=1)
    h.answer("reply", state="a-state")
    h.send()
    h.answer("replace", service="ghost", state="new-a-state")
    h.take()
    h.returned()
    assert h.stack() == [("root", 1), ("a", "new-a-state")]
    d = h.last_dispatch()
    assert d["depth"] == 1 and d["_queue"] == "t.service.a" and d["state"] == "new-a-state"
    assert d["result"]["service"] == "ghost" and not d["result"]["ok"]


def test_unknown_root_is_error_and_gone() -> None:
    h = Harness()
    h.send(entry="ghost")
    h.take()
    h.returned()
    assert h.notices()[-1]["type"] == "error"
    assert h.notices()[-1]["error"]["code"] == "unknown_service"
    assert h.stack() == []


def test_unknown_service_on_message_fails_frame() -> None:
    h = Harness()
    h.send()
    h.answer("open", service="a")
    h.answer("reply")
    h.send("x")
    h.take()
    h.returned()
    d = h.last_dispatch()
    assert d["depth"] == 0 and d["result"] == {
        "service": "a", "ok": False,
        "error": {"code": "unknown_service", "message": d["result"]["error"]["message"]}}


def test_deadline_redispatches_same_turn_then_times_out() -> None:
    h = Harness(turn_timeout_ms=1000, max_attempts=2)
    h.send()
    h.answer("open", service="slow", state="p")
    first = h.last_dispatch()
    assert not h.tick(999).changed
    h.tick(1)
    second = h.last_dispatch()
    assert second["turn"] == first["turn"] and second["attempt"] == 2
    assert {k: v for k, v in second.items() if k != "attempt"} == {
        k: v for k, v in first.items() if k != "attempt"}
    h.tick(1000)
    d = h.last_dispatch()
    assert d["event"] == "result" and d["result"]["error"]["code"] == "timeout"
    assert h.stack() == [("root", "p")]


def test_late_reply_of_any_attempt_counts_but_only_first() -> None:
    h = Harness()
    h.send()
    turn = h.turn_id
    h.tick(1000)  # attempt 2
    assert h.answer("reply", turn=turn, state="A").changed
    assert not h.answer("reply", turn=turn, state="B").changed
    assert h.stack() == [("root", "A")]


def test_stale_forged_and_unknown_turn_replies_are_dropped() -> None:
    h = Harness()
    h.send()
    out = h.answer("reply", turn="forged-turn-id-xxxxxx", state="evil")
    assert not out.changed and out.dropped
    assert h.record is not None and h.record.turn is not None


def test_invalid_reply_for_stale_turn_is_dropped_not_dead_lettered() -> None:
    h = Harness()
    h.send()
    h.take()
    out = h.answer("nonsense", turn="not-in-flight")
    assert not out.changed and h.effects == []


def test_fifo_waits_for_chain_and_runs_in_order() -> None:
    h = Harness()
    h.send("one")
    h.send("two")
    h.send("three")
    assert [d["payload"] for d in h.dispatches()] == ["one"]
    h.answer("reply")
    h.answer("reply")
    assert [d["payload"] for d in h.dispatches()] == ["one", "two", "three"]
    assert h.record is not None and h.record.waiting == []


def test_duplicate_message_id_is_ignored_even_after_gone() -> None:
    h = Harness()
    h.send("one", id="a")
    assert not h.send("one", id="a").changed
    h.answer("fail", error={"code": "x"})
    assert not h.send("one", id="a").changed
    h.send("end", id="e", type="end")
    assert not h.send("one", id="a").changed


def test_end_discards_everything_fences_turn_and_notices() -> None:
    h = Harness()
    h.send("one")
    turn = h.turn_id
    h.send("two")
    h.take()
    h.send(type="end", id="bye")
    assert h.stack() == [] and h.record is not None and h.record.waiting == []
    assert h.notices() == [{"v": 1, "session": "s1", "id": h.notices()[0]["id"],
                            "in_reply_to": "bye", "type": "end"}]
    assert not h.answer("reply", turn=turn).changed
    assert h.dispatches() == []


def test_end_on_unknown_session_still_notices() -> None:
    h = Harness()
    h.send(type="end", id="e1")
    assert [n["type"] for n in h.notices()] == ["end"]


def test_notices_go_to_reply_to_of_chain_origin() -> None:
    h = Harness()
    h.send("a", reply_to="q1")
    h.send("b", reply_to="q2")
    h.answer("reply", output=["for a"])
    h.answer("reply", output=["for b"])
    by_queue = {e.queue: wire.decode(e.body)["payload"] for e in h.effects if e.kind == "notice"}
    assert by_queue == {"q1": "for a", "q2": "for b"}


def test_seq_in_order_accepted_at_once() -> None:
    h = Harness()
    h.send("1", seq=1)
    h.send("2", seq=2)
    assert h.record is not None and h.record.last_seq == 2 and not h.record.held


def test_seq_gap_is_held_then_released_in_order() -> None:
    h = Harness()
    h.send("3", seq=3)
    h.send("2", seq=2)
    assert h.dispatches() == [] and h.record is not None and len(h.record.held) == 2
    h.send("1", seq=1)
    h.answer("reply")
    h.answer("reply")
    assert [d["payload"] for d in h.dispatches()] == ["1", "2", "3"]


def test_seq_hold_expires_and_releases_lower_ones_in_order() -> None:
    h = Harness(seq_hold_ms=500)
    h.send("5", seq=5)
    h.now += 100
    h.send("3", seq=3)
    assert h.record is not None and h.record.due_ms(h.cfg) == h.now - 100 + 500
    h.tick(400)  # 5 expires: accepts 3 then 5
    assert [d["payload"] for d in h.dispatches()] == ["3"]
    h.answer("reply")
    assert [d["payload"] for d in h.dispatches()] == ["3", "5"]
    assert h.record.last_seq == 5


def test_seq_not_above_last_is_accepted_restart_from_one() -> None:
    h = Harness()
    h.send("1", seq=1)
    h.answer("reply")
    h.send("2", seq=2)
    h.answer("reply")
    h.send("again", seq=1)
    assert h.last_dispatch()["payload"] == "again"
    assert h.record is not None and h.record.last_seq == 1


def test_message_without_seq_passes_held_ones() -> None:
    h = Harness()
    h.send("held", seq=4)
    h.send("free")
    assert [d["payload"] for d in h.dispatches()] == ["free"]
    assert h.record is not None and h.record.last_seq == 0


def test_end_discards_held_and_sets_last_seq() -> None:
    h = Harness()
    h.send("held", seq=4)
    h.send(type="end", seq=9)
    assert h.record is not None and h.record.held == [] and h.record.last_seq == 9
    h.send("10", seq=10)
    assert h.last_dispatch()["payload"] == "10"


def test_waiting_limit_answers_excess_with_busy_and_leaves_the_session_unchanged() -> None:
    h = Harness(max_waiting=2)
    h.send("run")
    h.send("w1")
    h.now += 1000
    h.send("h1", seq=9)  # held: waiting and held count together
    h.take()
    before = h.record
    assert before is not None
    h.now += 1000
    out = h.send("w3", id="over")
    assert out.changed and out.remember is None  # the id is not remembered
    n = h.notices()[-1]
    assert n["type"] == "error" and n["error"]["code"] == "busy"
    assert n["in_reply_to"] == "over"
    assert h.dispatches() == []
    assert h.record is not None
    assert (h.record.waiting, h.record.held, h.record.activity_ms, h.record.stack) == (
        before.waiting, before.held, before.activity_ms, before.stack)
    h.take()
    # A message that would not wait is taken: no chain runs, so it starts one at once.
    h.answer("reply")  # w1's chain starts
    h.answer("reply")
    assert h.record.chain is None and len(h.record.held) == 1
    h.take()
    h.send("free")
    assert [d["payload"] for d in h.dispatches()] == ["free"]
    assert h.notices() == []
    # The refused id was not remembered: the same message is accepted later.
    h.answer("reply")
    h.take()
    h.send("w3 again", id="over")
    assert [d["payload"] for d in h.dispatches()] == ["w3 again"]


def test_busy_counts_a_message_that_would_be_held() -> None:
    h = Harness(max_waiting=1)
    h.send("h1", seq=5)
    h.take()
    h.send("h2", seq=7, id="second-held")
    n = h.notices()[-1]
    assert n["error"]["code"] == "busy" and n["in_reply_to"] == "second-held"
    # Next in line is accepted at once (no chain runs): not refused.
    h.send("one", seq=1)
    assert [d["payload"] for d in h.dispatches()] == ["one"]


def test_expiry_covers_ttl_and_deadlines() -> None:
    h = Harness(session_ttl_ms=60_000, turn_timeout_ms=1000)
    h.send()
    assert h.record is not None
    assert h.record.expire_at_ms(h.cfg) == h.now + 1000 + 60_000
    h.answer("reply")
    assert h.record.expire_at_ms(h.cfg) == h.now + 60_000


def test_step_does_not_mutate_input_record() -> None:
    h = Harness()
    h.send()
    before = h.record
    assert before is not None
    blob = before.encode()
    msg = wire.ClientMessage("s1", "zz", "fe", payload="x")
    step(before, "s1", ClientArrived(msg), h.now, h.new_id, h.cfg)
    assert before.encode() == blob
    assert Record.decode(blob).encode() == blob


def test_undeliverable_for_old_attempt_is_ignored() -> None:
    h = Harness()
    h.send()
    first = h.last_dispatch()
    h.tick(1000)
    from router.core import Undeliverable
    assert not h.run(Undeliverable(first["turn"], 1)).changed


TRACE_A = {"traceparent": "00-" + "a" * 32 + "-" + "1" * 16 + "-01", "tracestate": "k=a"}
TRACE_B = {"traceparent": "00-" + "b" * 32 + "-" + "2" * 16 + "-01"}


def test_trace_headers_follow_every_dispatch_and_notice_of_their_chain() -> None:
    h = Harness(max_attempts=2)
    h.send("one", trace=TRACE_A)
    h.send("two", trace=TRACE_B)  # waits behind the first chain: stored with its trace
    h.send("three")  # no trace: none copied
    h.answer("open", service="child", output=["o1"])
    h.tick(h.cfg.turn_timeout_ms)  # a re-dispatch carries it too
    h.answer("close", result=1)
    h.answer("reply", output=["o2"])  # chain one ends; two starts
    h.answer("reply", output=["o3"])  # chain two ends; three starts
    h.answer("pass")  # the root passes: unhandled
    by_chain: dict[str, list[dict[str, str]]] = {}
    payloads = {"m1": "one", "m2": "two", "m3": "three"}
    for effect in h.effects:
        if effect.kind == "notice":
            key = payloads[wire.decode(effect.body)["in_reply_to"]]
            by_chain.setdefault(key, []).append(effect.headers)
    assert by_chain == {"one": [TRACE_A, TRACE_A], "two": [TRACE_B], "three": [{}]}
    dispatch_traces = [(wire.decode(e.body).get("payload"), e.headers) for e in h.sent]
    assert dispatch_traces == [
        ("one", TRACE_A), (None, TRACE_A), (None, TRACE_A), (None, TRACE_A),
        ("two", TRACE_B), ("three", {})], dispatch_traces


def test_busy_and_end_notices_carry_their_message_trace() -> None:
    h = Harness(max_waiting=0)
    h.send("run")
    h.take()
    h.send("over", id="busy-one", trace=TRACE_B)
    h.send(type="end", id="bye", trace=TRACE_A)
    assert [(n.headers, wire.decode(n.body)["in_reply_to"]) for n in h.take()] == [
        (TRACE_B, "busy-one"), (TRACE_A, "bye")]
