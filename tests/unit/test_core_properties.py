"""Invariants of the core over random sequences of events (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.core import IdleFired, Undeliverable

from .core_harness import Harness

ACTIONS = ["reply", "open", "close", "replace", "pass", "fail", "garbage"]

event = st.one_of(
    st.tuples(st.just("send"), st.integers(0, 6), st.sampled_from(["message", "end"])),
    st.tuples(st.just("answer"), st.sampled_from(ACTIONS), st.booleans()),
    st.tuples(st.just("forged"), st.sampled_from(ACTIONS), st.booleans()),
    st.tuples(st.just("tick"), st.integers(0, 1500), st.booleans()),
    st.tuples(st.just("returned"), st.just(0), st.booleans()),
)


def _answer(h: Harness, action: str, flag: bool, turn: str | None = None) -> None:
    fields: dict[str, Any] = {}
    if action in ("open", "replace"):
        fields["service"] = "child" if flag else "other"
        fields["args"] = {"from": action}
    if action == "fail":
        fields["error"] = {"code": "oops"}
    if action in ("reply", "open") and flag:
        fields["state"] = {"n": len(h.effects)}
        fields["idle"] = 0.4 + len(h.effects) % 3 * 0.3
    fields["output"] = ["o"] if flag else []
    h.answer("explode" if action == "garbage" else action, turn=turn, **fields)


def _check(h: Harness) -> None:
    rec = h.record
    if rec is None:
        return
    assert 0 <= len(rec.stack) <= h.cfg.max_depth
    if rec.turn is None:
        assert rec.chain is None, "a chain without a turn in flight would stall"
        assert rec.waiting == [], "messages wait only while a chain runs"
    else:
        assert rec.chain is not None
        assert 0 <= rec.turn.depth < len(rec.stack)
        assert 1 <= rec.turn.attempt <= h.cfg.max_attempts
        assert rec.turn.dispatch.turn == rec.turn.id
        assert rec.turn.dispatch.depth == rec.turn.depth
        assert rec.turn.dispatch.state == rec.stack[rec.turn.depth].state or \
            rec.turn.event == "start"
    fired = [w.token for w in rec.waiting if isinstance(w, IdleFired)]
    assert len(fired) == len(set(fired)), "a timer fires at most once"
    seqs = [x.message.seq or 0 for x in rec.held]
    assert seqs == sorted(seqs), "held messages are kept in seq order"
    assert len(rec.waiting) + len(rec.held) <= h.cfg.max_waiting


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(event, max_size=60), st.booleans())
def test_invariants_hold_over_random_events(events: list[tuple[str, Any, Any]],
                                            keep_records: bool) -> None:
    """``keep_records``: each step gets the record object the previous one made (the record
    cache's way), whose frames it shares; the harness checks that no step changes it."""
    h = Harness(max_depth=4, max_attempts=2, turn_timeout_ms=1000, seq_hold_ms=300,
                keep_records=keep_records)
    seq = 0
    for kind, a, b in events:
        before = None if h.record is None else h.record.encode()
        if kind == "send":
            if a:
                seq += 1
            h.send(f"p{len(h.effects)}", seq=(seq + a - 3 if a > 3 else None) if a else None,
                   type=b)
        elif kind == "answer" and h.record is not None and h.record.turn is not None:
            _answer(h, a, b)
        elif kind == "forged":
            _answer(h, a, b, turn="forged-turn-0123456789")
            after = None if h.record is None else h.record.encode()
            assert after == before, "a reply for a turn not in flight changed the session"
        elif kind == "tick":
            h.tick(a)
            if h.record is not None:
                late = [at for at, _ in h.record.timers_due() if at <= h.now]
                assert not late, "a due timer did not fire"
        elif kind == "returned" and h.record is not None and h.record.turn is not None:
            t = h.record.turn
            h.run(Undeliverable(t.id, t.attempt))
        _check(h)


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(1, 9))))
def test_seq_order_is_restored_whatever_the_arrival_order(order: list[int]) -> None:
    h = Harness(seq_hold_ms=10_000)
    for n in order:
        h.send(n, seq=n)
    started: list[int] = []
    while h.record is not None and h.record.turn is not None:
        started.append(h.last_dispatch()["payload"])
        h.answer("reply")
    assert started == list(range(1, 9))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=12), st.integers(0, 3000))
def test_held_messages_are_never_lost(seqs: list[int], wait: int) -> None:
    """Whatever arrives, every accepted message eventually starts exactly one chain."""
    h = Harness(seq_hold_ms=1000)
    ids = []
    for i, n in enumerate(seqs):
        h.send(f"m{i}", id=f"id{i}", seq=n)
        ids.append(f"m{i}")
    h.tick(wait)
    h.tick(1000)
    started: list[str] = []
    for _ in range(100):
        if h.record is None or h.record.turn is None:
            break
        started.append(h.last_dispatch()["payload"])
        h.answer("reply")
        h.tick(1000)
    assert sorted(started) == sorted(ids)
