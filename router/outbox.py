"""Outbox delivery: publish what a committed step owes (and dead letters), then discard it.

Notices and dead letters are confirmed before dispatches, so a service's answer can never
overtake the notice of the turn before it. A dispatch the broker returns (its queue does not
exist) is handed back to the caller as an ``Undeliverable`` event to step.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from time import perf_counter
from typing import TYPE_CHECKING

from worker_sdk import tracing, wire
from worker_sdk.broker import Broker, Outgoing, Published, Refused

from .core import Effect, Record, Undeliverable
from .ingest import DeadLetter
from .store import SessionStore, StoreUnavailable

if TYPE_CHECKING:
    from .metrics import RouterMetrics

log = logging.getLogger(__name__)


class Outbox:
    """Publishes outbox entries and dead letters for one router replica."""

    def __init__(self, broker: Broker, store: SessionStore, dead_queue: str,
                 stats: Counter[str], *, metrics: RouterMetrics | None = None,
                 namespace: str | None = None, partitions: int = 0) -> None:
        self.broker = broker
        self.metrics = metrics
        self.store = store
        self.dead_queue = dead_queue
        self.stats = stats
        self._unsent: set[str] = set()
        self._prefix = None if namespace is None else namespace + "."
        self.partitions = partitions
        """``--partitions``: a dispatch names its session's replies partition (0: none)."""
        self._noted: set[str] = set()
        """Queues of the namespace this replica has told the store of (see note_queues)."""

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
                      answered: str | None = None, unhint_ms: int | None = None,
                      effects: list[Effect] | None = None) -> list[Undeliverable]:
        """Publish outbox entries (notices and dead letters first), then discard them.

        ``effects``: the entries as the step made them (``encoded`` is their stored form),
        so that a fresh outbox is not decoded again; a leftover one is.
        Returns the dispatches the broker returned, as events for the caller to step.
        """
        self._unsent.add(session)
        m = self.metrics
        started = perf_counter()
        current = record.turn if record is not None else None
        if effects is None:
            effects = [Effect.decode(e) for e in encoded]
        first = [e for e in effects if e.kind != "dispatch"]
        # A leftover dispatch of a turn no longer in flight would only be fenced off.
        second = [e for e in effects if e.kind == "dispatch" and current is not None
                  and e.turn == current.id and e.attempt == current.attempt
                  and e.turn != answered]
        if first:
            with contextlib.ExitStack() as spans:
                published = await self.broker.publish([_outgoing(e, spans, session) for e in first])
            for effect, fate in zip(first, published, strict=True):
                self._count_unsent(fate, "notice" if effect.kind == "notice" else "dead",
                                   session)
        returned: list[Effect] = []
        if second:
            reply_to = (wire.partition_key(wire.REPLIES_KEY,
                                           wire.partition_of(session, self.partitions))
                        if self.partitions else None)
            with contextlib.ExitStack() as spans:
                published = await self.broker.publish([_outgoing(e, spans, session, reply_to)
                                                       for e in second])
            # A refused dispatch (a service name too long for a queue name) is reported back
            # like a returned one: no queue can take it.
            returned = [e for e, ok in zip(second, published, strict=True) if not ok]
            self.stats["dispatches"] += len(second) - len(returned)
            self.stats["publishes_refused"] += sum(isinstance(p, Refused) for p in published)
        if m is not None:
            m.phase("publish", perf_counter() - started)
            started = perf_counter()
        await self.store.discard(session, encoded, unhint_ms=unhint_ms)
        if m is not None:
            m.phase("discard", perf_counter() - started)
        self._unsent.discard(session)
        await self._note(effects, returned)
        events = []
        for effect in returned:
            assert effect.turn is not None
            log.info("event=dispatch_returned session=%s queue=%s", session, effect.queue)
            events.append(Undeliverable(effect.turn, effect.attempt))
        return events

    async def _note(self, effects: list[Effect], returned: list[Effect]) -> None:
        """Tell the store the service queues this replica dispatched to for the first time,
        so that ``cloudbunch purge`` finds them after the sessions that named them are gone.
        Once per queue and replica (services are few: frontends' reply queues are not noted,
        a generated one per client would grow the set without end); best effort: a failure
        only means it is told again next time."""
        prefix = self._prefix
        if prefix is None:
            return
        new = {e.queue for e in effects if e.kind == "dispatch" and e.queue.startswith(prefix)
               and e.queue not in self._noted and e not in returned}
        if not new:
            return
        try:
            await self.store.note_queues(new)
        except StoreUnavailable as exc:
            log.debug("event=note_queues_failed reason=%s", exc)
            return
        self._noted |= new

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Publish a body unchanged to ``NS.dead`` with the reason headers (guarantee 8), then
        the error notice its sender is owed, if any."""
        self.stats["dead_letters"] += 1
        if self.metrics is not None:
            self.metrics.dead_letter(letter.source_queue, str(letter.reason))
        log.warning("event=dead_letter queue=%s reason=%s detail=%r", letter.source_queue,
                    letter.reason, letter.detail)
        (published,) = await self.broker.publish([Outgoing(
            self.dead_queue, letter.body, letter.message_id, letter.headers)])
        self._count_unsent(published, "dead", letter.source_queue)
        if letter.notice is None:
            return
        notice = letter.notice
        (published,) = await self.broker.publish([Outgoing(
            letter.reply_to, wire.encode(notice.to_wire()), notice.id,
            dict(notice.trace or {}))])
        if self.metrics is not None:
            self.metrics.notices.labels("error").inc()
        self._count_unsent(published, "notice", notice.session)

    def _count_unsent(self, published: Published, kind: str, where: str) -> None:
        """A notice or dead letter no queue took is dropped and counted, never retried: a
        returned one names no queue; a refused one carries what the broker cannot take (a
        routing key over 255 bytes, RabbitMQ's direct reply-to...), and would loop."""
        if published:
            return
        self.stats["notices_dropped" if kind == "notice" else "dead_letters_dropped"] += 1
        if kind == "notice" and self.metrics is not None:
            self.metrics.notices_dropped.inc()
        if isinstance(published, Refused):
            self.stats["publishes_refused"] += 1
            log.warning("event=%s_refused where=%s reason=%s", kind, where[:80],
                        published.reason)
        else:
            log.info("event=%s_dropped where=%s (no such queue)", kind, where[:80])


def _outgoing(effect: Effect, spans: contextlib.ExitStack | None = None,
              session: str | None = None, reply_to: str | None = None) -> Outgoing:
    """The message of an outbox entry. When tracing, a dispatch or notice gets a producer
    span, open until its publish is confirmed, whose context replaces the chain's trace
    headers: a child of the step's span (for a deadline's step, see ``tracing.deferred_span``),
    or of the chain's context. A dispatch carries the time it is sent (``wire.SENT_HEADER``)."""
    headers = effect.headers
    if effect.kind == "dispatch":  # when it was sent: the worker measures its queue wait
        headers = {**headers, wire.SENT_HEADER: str(time.time_ns() // 1_000_000)}
    if spans is not None and effect.kind in ("dispatch", "notice") and tracing.enabled():
        service = (effect.queue.split(".service.", 1)[1]
                   if effect.kind == "dispatch" and ".service." in effect.queue else None)
        span = spans.enter_context(tracing.start_span(
            f"send {effect.queue}", "producer", tracing.parent(headers),
            tracing.messaging("send", effect.queue, message_id=effect.message_id,
                              session=session, turn=effect.turn, service=service),
            current=False))
        headers = tracing.inject(headers, span)
    return Outgoing(effect.queue, effect.body, effect.message_id, headers, reply_to=reply_to)
