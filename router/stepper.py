"""The stepper: apply one event to one session, durably, around the pure core.

One try: load the session (or take the record this replica cached) -> publish any leftover
outbox first -> run the core -> commit record + new outbox atomically (compare-and-set on the
version) -> deliver the outbox. A try either finishes the event or says it must be tried again
(leftovers went out first, another replica's fresh outbox is given time, the commit lost a
race, a cached record proved nothing). Dispatches the broker returns become ``Undeliverable``
events, stepped in order in the same lock: after the event whose outbox they came from, or,
for leftovers, before the event still waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING

from . import core, history
from .core import CoreConfig, Event, Outcome, Record, ReplyArrived
from .outbox import Outbox
from .record_cache import FastPathGate, RecordCache
from .store import SessionStore, Snapshot

if TYPE_CHECKING:
    from .metrics import RouterMetrics

log = logging.getLogger(__name__)

LEFTOVER_GRACE_MS = 1_000
"""How long a fresh outbox is left to the replica that wrote it before another re-sends it."""


@dataclass(slots=True)
class _Job:
    """One event to apply, and how far its tries have got."""

    make_event: Callable[[Snapshot], Event]
    dedup_id: str | None = None
    hint: bool = True
    first_try: bool = True
    pause: float = 0.002

    async def wait(self) -> None:
        """Back off before the next try (2 ms, doubling, 100 ms at most)."""
        await asyncio.sleep(self.pause)
        self.pause = min(self.pause * 2, 0.1)


@dataclass(slots=True)
class _Tried:
    """What one try did: ``outcome`` None means "try again"; ``returned`` are the events the
    broker's returned dispatches cause."""

    outcome: Outcome | None = None
    returned: list[Event] = field(default_factory=list)


class Stepper:
    """Steps sessions one event at a time (per session), for one router replica."""

    def __init__(self, store: SessionStore, outbox: Outbox, cfg: CoreConfig, *,
                 clock: Callable[[], float], ids: Callable[[], str], stats: Counter[str],
                 cache_age: float, history_max: int = 0,
                 metrics: RouterMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.outbox = outbox
        self.cfg = cfg
        self.clock = clock
        self.ids = ids
        self.stats = stats
        self.history_max = history_max
        """History entries kept per session (0: none recorded)."""
        self.cache = RecordCache(max_age=cache_age)
        self._fast = FastPathGate()
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: Counter[str] = Counter()

    async def run(self, session: str, make_event: Callable[[Snapshot], Event], *,
                  dedup_id: str | None = None, hint: bool = True) -> Outcome:
        """Apply one event to a session, durably, and publish what it causes."""
        lock = self._locks.get(session)
        if lock is None:
            lock = self._locks[session] = asyncio.Lock()
        self._lock_users[session] += 1
        try:
            async with lock:
                return await self._run_locked(session, _Job(make_event, dedup_id, hint))
        finally:
            self._lock_users[session] -= 1
            if not self._lock_users[session]:
                del self._lock_users[session]
                self._locks.pop(session, None)

    async def _run_locked(self, session: str, job: _Job) -> Outcome:
        """Apply ``job``, and every event a returned dispatch causes, in order."""
        pending = [job]
        result: Outcome | None = None
        while pending:
            current = pending[-1]
            tried = await self._try(session, current)
            if tried.outcome is not None:
                pending.pop()
                if current is job:
                    result = tried.outcome
            # The first returned event goes on top of the stack: it is stepped next.
            pending.extend(_Job(_constant(event)) for event in reversed(tried.returned))
        assert result is not None
        return result

    async def _try(self, session: str, job: _Job) -> _Tried:
        snap, record, fast = await self._read(session, job)
        event = job.make_event(snap)
        if snap.outbox:
            return await self._leftovers(session, record, snap.outbox, event, job)
        now = int(self.clock() * 1000)
        started = perf_counter()
        out = core.step(record, session, event, now, self.ids, self.cfg)
        if self.metrics is not None:
            self.metrics.phase("core", perf_counter() - started)
        if not out.changed:
            if fast:
                return _Tried()  # "nothing to do" from a cached record is not proof: load
            self.cache.put(session, snap.version, record)
            return _Tried(out)
        return await self._commit(session, snap.version, record, event, now, out, job.hint,
                                  fast)

    async def _read(self, session: str, job: _Job) -> tuple[Snapshot, Record | None, bool]:
        """The session as this try sees it, and whether it comes from the cache."""
        cached = None
        if job.first_try:
            job.first_try = False
            # Not after a failed publish of ours: that outbox must go out first.
            if not self.outbox.may_be_unsent(session):
                cached = self.cache.get(session)
        if cached is not None and self._fast.use():
            # Fast path: no load. The commit's compare-and-set on the version (and its
            # refusal of a remembered message id) proves the cached record current.
            version, record = cached
            return Snapshot(version, None), record, True
        started = perf_counter()
        snap = await self.store.load(session, job.dedup_id)
        if self.metrics is not None:
            self.metrics.phase("load", perf_counter() - started)
        record = Record.decode(snap.record) if snap.record is not None else None
        return snap, record, False

    async def _leftovers(self, session: str, record: Record | None, outbox: list[bytes],
                         event: Event, job: _Job) -> _Tried:
        """Leftovers of a step that committed but may not have published (a crash, a lost
        connection, or another replica still at it): they go out before the event."""
        if record is not None and not self.outbox.may_be_unsent(session) and (
                self.clock() * 1000 - record.stamp_ms < LEFTOVER_GRACE_MS):
            # Most likely another replica is publishing these right now and will discard
            # them in a moment: re-sending would only make copies. Look again shortly.
            self.stats["leftover_waits"] += 1
            await job.wait()
            return _Tried()
        # The dispatch a reply answers evidently arrived: it is not sent again.
        answered = event.turn if isinstance(event, ReplyArrived) else None
        returned = await self.outbox.deliver(session, record, outbox, answered=answered)
        return _Tried(None, list(returned))

    async def _commit(self, session: str, version: int, record: Record | None, event: Event,
                      now: int, out: Outcome, hint: bool, fast: bool) -> _Tried:
        """Commit the step's record, outbox and history; on success, deliver the outbox."""
        assert out.record is not None
        new = out.record
        due = new.due_ms(self.cfg)
        old_due = record.due_ms(self.cfg) if record is not None else None
        encoded = [e.encode() for e in out.effects]
        self.outbox.committing(session)
        started = perf_counter()
        applied = await self.store.commit(
            session, version, new.encode(), append=encoded, remember=out.remember,
            expire_at_ms=new.expire_at_ms(self.cfg),
            hint_ms=due if hint and due is not None and due != old_due else None,
            history=history.entries(record, event, out, now) if self.history_max else (),
            history_max=self.history_max)
        if self.metrics is not None:
            self.metrics.phase("commit", perf_counter() - started)
        if fast:
            self._fast.outcome(applied)
        if not applied:
            self.outbox.not_committed(session)
            self.cache.drop(session)
            self.stats["cas_retries"] += 1
            return _Tried()
        self.cache.put(session, version + 1, new)
        self.stats["steps"] += 1
        if self.metrics is not None:
            self.metrics.stepped(event, record, out)
        # A deadline just cleared: drop its hint now rather than let the scanner find it.
        unhint = old_due if hint and due is None else None
        returned = await self.outbox.deliver(session, new, encoded, unhint_ms=unhint,
                                             effects=list(out.effects))
        return _Tried(out, list(returned))


def _constant(event: Event) -> Callable[[Snapshot], Event]:
    return lambda snap: event
