"""Outbox delivery: publish what a committed step owes (and dead letters), then discard it.

Notices and dead letters are confirmed before dispatches, so a service's answer can never
overtake the notice of the turn before it. A dispatch the broker returns (its queue does not
exist) is handed back to the caller as an ``Undeliverable`` event to step.
"""

from __future__ import annotations

import logging
from collections import Counter
from time import perf_counter
from typing import TYPE_CHECKING

from worker_sdk import wire
from worker_sdk.broker import Broker, Outgoing

from .core import Effect, Record, Undeliverable
from .ingest import DeadLetter
from .store import SessionStore

if TYPE_CHECKING:
    from .metrics import RouterMetrics

log = logging.getLogger(__name__)


class Outbox:
    """Publishes outbox entries and dead letters for one router replica."""

    def __init__(self, broker: Broker, store: SessionStore, dead_queue: str,
                 stats: Counter[str], *, metrics: RouterMetrics | None = None) -> None:
        self.broker = broker
        self.metrics = metrics
        self.store = store
        self.dead_queue = dead_queue
        self.stats = stats
        self._unsent: set[str] = set()

    def may_be_unsent(self, session: str) -> bool:
        """Whether this replica committed an outbox for ``session`` it may not have published."""
        return session in self._unsent

    def committing(self, session: str) -> None:
        """A commit is under way: if its answer is lost, the outbox is this replica's to send."""
        self._unsent.add(session)

    def not_committed(self, session: str) -> None:
        """The commit was refused: there is nothing of ours to send."""
        self._unsent.discard(session)

    async def deliver(self, session: str, record: Record | None, encoded: list[bytes], *,
                      answered: str | None = None,
                      unhint_ms: int | None = None) -> list[Undeliverable]:
        """Publish outbox entries (notices and dead letters first), then discard them.

        Returns the dispatches the broker returned, as events for the caller to step.
        """
        self._unsent.add(session)
        m = self.metrics
        started = perf_counter()
        current = record.turn if record is not None else None
        effects = [Effect.decode(e) for e in encoded]
        first = [e for e in effects if e.kind != "dispatch"]
        # A leftover dispatch of a turn no longer in flight would only be fenced off.
        second = [e for e in effects if e.kind == "dispatch" and current is not None
                  and e.turn == current.id and e.attempt == current.attempt
                  and e.turn != answered]
        if first:
            routed = await self.broker.publish([_outgoing(e) for e in first])
            for effect, ok in zip(first, routed, strict=True):
                if not ok:
                    self.stats["notices_dropped"] += 1
                    if m is not None:
                        m.notices_dropped.inc()
                    log.info("event=notice_dropped session=%s queue=%s (no such queue)",
                             session, effect.queue)
        returned: list[Effect] = []
        if second:
            routed = await self.broker.publish([_outgoing(e) for e in second])
            returned = [e for e, ok in zip(second, routed, strict=True) if not ok]
            self.stats["dispatches"] += len(second) - len(returned)
        if m is not None:
            m.phase("publish", perf_counter() - started)
            started = perf_counter()
        await self.store.discard(session, encoded, unhint_ms=unhint_ms)
        if m is not None:
            m.phase("discard", perf_counter() - started)
        self._unsent.discard(session)
        events = []
        for effect in returned:
            assert effect.turn is not None
            log.info("event=dispatch_returned session=%s queue=%s", session, effect.queue)
            events.append(Undeliverable(effect.turn, effect.attempt))
        return events

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Publish a body unchanged to ``NS.dead`` with the reason headers (guarantee 8), then
        the error notice its sender is owed, if any."""
        self.stats["dead_letters"] += 1
        if self.metrics is not None:
            self.metrics.dead_letter(letter.source_queue, str(letter.reason))
        log.warning("event=dead_letter queue=%s reason=%s detail=%r", letter.source_queue,
                    letter.reason, letter.detail)
        await self.broker.publish([Outgoing(self.dead_queue, letter.body, letter.message_id,
                                            letter.headers)])
        if letter.notice is None:
            return
        notice = letter.notice
        routed = await self.broker.publish([Outgoing(letter.reply_to,
                                                     wire.encode(notice.to_wire()), notice.id)])
        if self.metrics is not None:
            self.metrics.notices.labels("error").inc()
        if not routed[0]:
            self.stats["notices_dropped"] += 1
            if self.metrics is not None:
                self.metrics.notices_dropped.inc()


def _outgoing(effect: Effect) -> Outgoing:
    return Outgoing(effect.queue, effect.body, effect.message_id, effect.headers)
