"""Drive the pure core by hand: one session, an injected clock and predictable ids."""

from __future__ import annotations

import itertools
from typing import Any

from router.core import (
    ClientArrived,
    CoreConfig,
    Effect,
    Event,
    Outcome,
    Record,
    ReplyArrived,
    Tick,
    Undeliverable,
    step,
)
from worker_sdk import wire


class Harness:
    """A session record and the effects each step produced."""

    def __init__(self, *, keep_records: bool = False, **cfg: Any) -> None:
        defaults: dict[str, Any] = {"root": "root", "namespace": "t", "turn_timeout_ms": 1000,
                                    "max_attempts": 3, "max_depth": 5, "session_ttl_ms": 60_000,
                                    "seq_hold_ms": 500, "max_waiting": 1_000}
        defaults.update(cfg)
        self.cfg = CoreConfig(**defaults)
        self.keep_records = keep_records
        """Give each step the record object the last one made, as the router's record cache
        does, instead of a copy read back from its stored form."""
        self.record: Record | None = None
        self.now = 1_000_000
        self.seen: set[str] = set()
        self._ids = itertools.count(1)
        self._msg = itertools.count(1)
        self.effects: list[Effect] = []
        self.sent: list[Effect] = []
        """Every dispatch ever produced (``take`` does not clear it)."""

    def new_id(self) -> str:
        return f"id{next(self._ids):04d}"

    def run(self, event: Event) -> Outcome:
        before = self.record
        stored = None if before is None else before.encode()
        out = step(before, "s1", event, self.now, self.new_id, self.cfg)
        if before is not None:
            assert before.encode() == stored, "a step changed the record it was given"
        if out.changed:
            assert out.record is not None
            # Round-trip through the stored form, as the shell does after a load.
            self.record = out.record if self.keep_records else Record.decode(
                out.record.encode())
            if out.remember:
                self.seen.add(out.remember)
            self.effects.extend(out.effects)
            self.sent.extend(e for e in out.effects if e.kind == "dispatch")
        return out

    # -- events

    def send(self, payload: Any = "hi", *, id: str | None = None, seq: int | None = None,
             type: str = "message", entry: str | None = None, meta: dict[str, Any] | None = None,
             reply_to: str = "fe", trace: dict[str, str] | None = None) -> Outcome:
        msg = wire.ClientMessage(session="s1", id=id or f"m{next(self._msg)}", reply_to=reply_to,
                                 type=type, payload=payload, seq=seq, entry=entry,  # type: ignore[arg-type]
                                 meta=meta, trace=trace)
        return self.run(ClientArrived(msg, msg.id in self.seen))

    def answer(self, action: str, turn: str | None = None, **fields: Any) -> Outcome:
        """Reply to the turn in flight (or ``turn``) with a body built from ``fields``."""
        body = {"v": 1, "session": "s1", "turn": turn or self.turn_id, "action": action, **fields}
        try:
            reply: wire.Reply | None = wire.Reply.from_wire(body)
            problem = None
        except wire.BadBody as exc:
            reply, problem = None, exc
        return self.run(ReplyArrived(body["turn"], reply, problem, wire.encode(body), "t.replies"))

    def tick(self, advance_ms: int) -> Outcome:
        self.now += advance_ms
        return self.run(Tick())

    def returned(self) -> Outcome:
        """The broker returned the last dispatch (its queue does not exist)."""
        last = self.sent[-1]
        assert last.turn is not None
        return self.run(Undeliverable(last.turn, last.attempt))

    # -- what happened

    @property
    def turn_id(self) -> str:
        assert self.record is not None and self.record.turn is not None, "no turn in flight"
        return self.record.turn.id

    def stack(self) -> list[tuple[str, Any]]:
        return [] if self.record is None else [(f.service, f.state) for f in self.record.stack]

    def take(self) -> list[Effect]:
        """Effects since the last take."""
        effects, self.effects = self.effects, []
        return effects

    def dispatches(self) -> list[dict[str, Any]]:
        return [wire.decode(e.body) | {"_queue": e.queue} for e in self.effects
                if e.kind == "dispatch"]

    def last_dispatch(self) -> dict[str, Any]:
        return self.dispatches()[-1]

    def notices(self) -> list[dict[str, Any]]:
        return [wire.decode(e.body) for e in self.effects if e.kind == "notice"]

    def said(self) -> list[Any]:
        """Payloads of output notices, then clear the effects."""
        out = [n["payload"] for n in self.notices() if n["type"] == "output"]
        return out
