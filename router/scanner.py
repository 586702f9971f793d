"""The deadline scanner: claim due hints and step each of their sessions with a ``Tick``.

The record is the truth and the index of due times only a hint (see ``router.store``): every
replica scans, claims due hints atomically for a lease, steps the session, then settles the
hint (dropped, or moved to the session's next due time). A replica that dies holding a claim
lets its lease run out, and another fires it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from worker_sdk import tracing, wire

from .core import CoreConfig, CorruptRecord, Event, Outcome, Tick
from .store import SessionStore, Snapshot

log = logging.getLogger(__name__)

LEASE_MS = 5_000
"""How long a claimed deadline hint is held before another replica may fire it again."""

Step = Callable[..., Awaitable[Outcome]]
"""``Stepper.run``: ``(session, make_event, hint=...)``."""


class Scanner:
    """Fires due deadlines until stopped."""

    def __init__(self, store: SessionStore, step: Step, cfg: CoreConfig, *,
                 clock: Callable[[], float], period: float,
                 health: Callable[[BaseException | None], None],
                 stats: Counter[str] | None = None) -> None:
        self.store = store
        self.stats: Counter[str] = Counter() if stats is None else stats
        self.step = step
        self.cfg = cfg
        self.clock = clock
        self.period = period
        self.health = health
        """Told ``None`` after a scan that reached the store, the error after one that did not."""

    async def run(self, stopping: asyncio.Event) -> None:
        """Scan every ``period`` seconds (at once again while hints are due) until ``stopping``."""
        while not stopping.is_set():
            try:
                if await self.fire_due():
                    continue
                self.health(None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.health(exc)
                log.warning("event=scan_failed error=%r", exc)
                await asyncio.sleep(1.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.period)

    async def fire_due(self) -> int:
        """One pass: claim the deadlines due now and step each of their sessions; return how
        many were claimed. (A test kit with a virtual clock calls it instead of :meth:`run`.)"""
        claimed = await self.store.claim_due(int(self.clock() * 1000), LEASE_MS)
        if claimed:
            await asyncio.gather(*(self._fire(s, lease) for s, lease in claimed))
        return len(claimed)

    async def _fire(self, session: str, lease: int) -> None:
        try:
            # The step's span: its parent is the chain's trace context, which only the
            # step's publishes carry, so it starts with the first of them (none: no span).
            with tracing.deferred_span("deadline", {"cloudbunch.session": session}) as span:
                out = await self.step(session, _tick, hint=False)
                if span is not None:
                    _describe(span, out)
            self.stats["timers_fired"] += out.fired
            due = out.record.due_ms(self.cfg) if out.record is not None else None
            await self.store.settle_hint(session, lease, due)
        except CorruptRecord as exc:
            # Firing again would fail again: drop the hint. The record stays for an operator.
            self.stats["corrupt_records"] += 1
            log.error("event=corrupt_record session=%s error=%s", session, exc)
            await self.store.settle_hint(session, lease, None)
        except Exception as exc:  # the lease makes it fire again later
            log.warning("event=deadline_failed session=%s error=%r", session, exc)


def _tick(snap: Snapshot) -> Event:
    return Tick()


def _describe(span: tracing.DeferredSpan, out: Outcome) -> None:
    """Name a deadline's step span by what it did: ``redispatch`` (the turn in flight sent
    again), ``idle timer`` (a frame's timer started an ``idle`` turn), ``turn timeout`` (the
    turn failed with ``timeout``), else ``deadline`` (held messages released)."""
    name = "deadline"
    attributes: dict[str, Any] = {"cloudbunch.timers_fired": out.fired or None}
    for effect in out.effects:
        if effect.kind not in ("dispatch", "notice"):
            continue
        try:
            body = wire.decode(effect.body)
        except wire.BadBody:
            continue
        error = (body.get("result") or {}).get("error") if effect.kind == "dispatch" \
            else body.get("error")
        if isinstance(error, dict) and error.get("code") == "timeout":
            name = "turn timeout"
        if effect.kind != "dispatch":
            continue
        attributes.update({
            "cloudbunch.turn": effect.turn, "cloudbunch.attempt": effect.attempt,
            "cloudbunch.depth": body.get("depth"), "cloudbunch.event": body.get("event"),
            "cloudbunch.service": effect.queue.split(".service.", 1)[-1]})
        if effect.attempt > 1:
            name = "redispatch"
        elif body.get("event") == "idle" and name == "deadline":
            name = "idle timer"
    span.update(name, **attributes)
