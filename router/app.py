"""The router's shell: consumers, the step loop around the pure core, the deadline scanner.

One step for one session: load (record, outbox, dedup) -> publish any leftover outbox ->
run the core -> commit record + new outbox atomically (compare-and-set on the version) ->
publish the outbox (notices and dead letters confirmed before dispatches) -> discard what was
published -> acknowledge the delivery. A crash anywhere in between is repaired by redelivery
or by the deadline scanner: the leftover outbox is published first, and the core drops the
redelivered event as already applied (dedup id, fencing token).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from worker_sdk import wire
from worker_sdk.broker import Broker, Delivery, Outgoing
from worker_sdk.errors import PublishFailed, StoreUnavailable

from . import core, history
from .config import RouterConfig
from .core import ClientArrived, Effect, Event, Outcome, Record, ReplyArrived, Tick, Undeliverable
from .store import SessionStore, Snapshot

log = logging.getLogger(__name__)

LEASE_MS = 5_000
"""How long a claimed deadline hint is held before another replica may fire it again."""
LEFTOVER_GRACE_MS = 1_000
"""How long a fresh outbox is left to the replica that wrote it before another re-sends it."""
RETRY_FOR_S = 20.0
"""How long a delivery's step is retried on store or broker errors before it is handed back."""


def new_id() -> str:
    """An unguessable id for turns and notices (22 characters)."""
    return secrets.token_urlsafe(16)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, (StoreUnavailable, PublishFailed, ConnectionError, OSError,
                            TimeoutError)) or type(exc).__module__.startswith("redis")


class Router:
    """One router replica. Any number may run against the same broker and store."""

    def __init__(self, config: RouterConfig, broker: Broker, store: SessionStore, *,
                 clock: Callable[[], float] = time.time,
                 ids: Callable[[], str] = new_id) -> None:
        self.config = config
        self.cfg = config.core()
        self.broker = broker
        self.store = store
        self.clock = clock
        self.ids = ids
        names = wire.queue_names(config.namespace)
        self.ingress, self.replies, self.dead = names["ingress"], names["replies"], names["dead"]
        self.stats: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: Counter[str] = Counter()
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._scanner: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        """Set when the replica cannot go on (store lost for good)."""
        self._failed = asyncio.Event()
        self._store_down_since: float | None = None
        self._unsent: set[str] = set()
        """Sessions whose outbox this replica may not have published: no grace on retry."""
        self._cache = _RecordCache(max_age=min(5.0, config.session_ttl / 4))
        self._fast = _FastPathGate()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Declare the shared queues, start consuming and scanning deadlines."""
        for queue in (self.ingress, self.replies, self.dead):
            await self.broker.declare(queue)
        self._scanner = asyncio.create_task(self._scan_loop(), name="cloudbunch-scanner")
        for queue, handler in ((self.ingress, self.on_ingress), (self.replies, self.on_reply)):
            await self.broker.consume(queue, self._guard(handler, queue), prefetch=64)
        log.info("event=router_started namespace=%s root=%s", self.config.namespace,
                 self.config.root)

    async def stop(self, grace: float = 7.0) -> None:
        """Stop consuming, let in-flight steps finish (up to ``grace`` s), stop the scanner."""
        self._stopping.set()
        await asyncio.gather(*(self.broker.cancel(q, drain=grace)
                               for q in (self.ingress, self.replies)), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 0.5)
        if self._scanner is not None:
            self._scanner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._scanner
        log.info("event=router_stopped %s", " ".join(f"{k}={v}" for k, v in
                                                      sorted(self.stats.items())))

    async def wait_failed(self) -> None:
        """Return when the replica cannot go on (the store stayed unreachable)."""
        await self._failed.wait()

    # ------------------------------------------------------------------ consumers

    def _guard(self, handler: Callable[[Delivery], Any],
               source: str) -> Callable[[Delivery], Any]:
        async def guarded(delivery: Delivery) -> None:
            self._busy += 1
            self._idle.clear()
            try:
                try:
                    await handler(delivery)
                except Exception as exc:
                    if not _transient(exc):
                        raise
                    # Only now pay for a retry loop: the common case has no failure.
                    async for attempt in AsyncRetrying(
                            stop=stop_after_delay(RETRY_FOR_S), reraise=True,
                            wait=wait_exponential(multiplier=0.05, max=2.0),
                            retry=retry_if_exception(_transient)):
                        with attempt:
                            await handler(delivery)
                self._store_ok()
            except Exception as exc:
                if _transient(exc):
                    self._store_error(exc)
                    log.warning("event=delivery_requeued error=%r", exc)
                    await delivery.reject(requeue=True)
                else:
                    await self._contain(delivery, source, exc)
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()
        return guarded

    async def _contain(self, delivery: Delivery, source: str, exc: Exception) -> None:
        """A delivery that makes the router fail (a bug, not bad input): requeueing it would
        loop forever, so it goes to the dead-letter queue with reason ``internal``."""
        log.error("event=router_error queue=%s", source, exc_info=exc)
        self.stats["internal_errors"] += 1
        try:
            problem = wire.BadBody("invalid", f"{type(exc).__name__}: {exc}")
            await self._dead_letter(delivery.body, problem, source, reason="internal")
        except Exception:
            log.exception("event=dead_letter_failed queue=%s", source)
            await delivery.reject(requeue=True)
            return
        await delivery.ack()

    def _store_ok(self) -> None:
        self._store_down_since = None

    def _store_error(self, exc: BaseException) -> None:
        if not _transient(exc):
            return
        now = time.monotonic()
        if self._store_down_since is None:
            self._store_down_since = now
        elif now - self._store_down_since > 30:
            self.failure = exc
            self._failed.set()

    async def on_ingress(self, delivery: Delivery) -> None:
        """One client message from ``NS.ingress``."""
        body = delivery.body
        oversized = len(body) > self.config.max_body
        try:
            obj = wire.decode(body)
        except wire.BadBody as exc:
            problem = self._too_large(body) if oversized else exc
            await self._dead_letter(body, problem, self.ingress)
            await delivery.ack()
            return
        try:
            if oversized:
                raise self._too_large(body)
            message = wire.ClientMessage.from_wire(obj)
        except wire.BadBody as problem:
            await self._reject_client_message(body, obj, problem)
            await delivery.ack()
            return
        await self.run_step(message.session, lambda snap: ClientArrived(message, snap.seen),
                            dedup_id=message.id)
        self.stats["client_messages"] += 1
        await delivery.ack()

    async def on_reply(self, delivery: Delivery) -> None:
        """One service reply from ``NS.replies``."""
        body = delivery.body
        oversized = len(body) > self.config.max_body
        try:
            obj = wire.decode(body)
        except wire.BadBody as exc:
            await self._dead_letter(body, self._too_large(body) if oversized else exc,
                                    self.replies)
            await delivery.ack()
            return
        session = obj.get("session") if isinstance(obj, dict) else None
        turn = obj.get("turn") if isinstance(obj, dict) else None
        if not isinstance(session, str) or not isinstance(turn, str):
            detail = ("the body is not a map" if not isinstance(obj, dict) else
                      "field 'session' and 'turn' must be strings to route the reply")
            problem = self._too_large(body) if oversized else wire.BadBody("invalid", detail)
            await self._dead_letter(body, problem, self.replies)
            await delivery.ack()
            return
        reply: wire.Reply | None = None
        problem_or_none: wire.BadBody | None = None
        try:
            if oversized:
                raise self._too_large(body)
            reply = wire.Reply.from_wire(obj)
        except wire.BadBody as problem:
            problem_or_none = problem
        event = ReplyArrived(turn, reply, problem_or_none, body, self.replies)
        out = await self.run_step(session, lambda snap: event)
        if out.dropped:
            self.stats["replies_dropped"] += 1
            log.info("event=reply_dropped session=%s turn=%s why=%r", session, turn, out.dropped)
        await delivery.ack()

    def _too_large(self, body: bytes) -> wire.BadBody:
        return wire.BadBody("too_large", f"body is {len(body)} bytes; max-body is "
                                         f"{self.config.max_body}")

    async def _dead_letter(self, body: bytes, problem: wire.BadBody, source: str, *,
                           reason: str | None = None) -> None:
        """Publish ``body`` unchanged to ``NS.dead`` with the reason headers (guarantee 8)."""
        self.stats["dead_letters"] += 1
        headers = core.dead_headers(problem, source)
        if reason is not None:
            headers["x-cb-reason"] = reason
        log.warning("event=dead_letter queue=%s reason=%s detail=%r", source,
                    headers["x-cb-reason"], problem.detail)
        digest = hashlib.sha256(body).hexdigest()[:32]
        await self.broker.publish([Outgoing(self.dead, body, f"dead-{digest}", headers)])

    async def _reject_client_message(self, body: bytes, obj: Any,
                                     problem: wire.BadBody) -> None:
        await self._dead_letter(body, problem, self.ingress)
        if not isinstance(obj, dict):
            return
        session, reply_to, msg_id = obj.get("session"), obj.get("reply_to"), obj.get("id")
        if not wire.session_ok(session) or not isinstance(reply_to, str) or not reply_to:
            return
        # Stable id: a redelivered copy of the same bad body yields the same notice id.
        nid = "inv-" + hashlib.sha256(session.encode() + b"\0" + body).hexdigest()[:32]
        notice = wire.Notice(session, nid, msg_id if isinstance(msg_id, str) else "", "error",
                             error=wire.ErrorInfo("invalid_message", problem.detail))
        routed = await self.broker.publish([Outgoing(reply_to, wire.encode(notice.to_wire()),
                                                     nid)])
        if not routed[0]:
            self.stats["notices_dropped"] += 1

    # ------------------------------------------------------------------ the step

    async def run_step(self, session: str, make_event: Callable[[Snapshot], Event], *,
                       dedup_id: str | None = None, hint: bool = True) -> Outcome:
        """Apply one event to a session, durably, and publish what it causes."""
        lock = self._locks.get(session)
        if lock is None:
            lock = self._locks[session] = asyncio.Lock()
        self._lock_users[session] += 1
        try:
            async with lock:
                return await self._step_locked(session, make_event, dedup_id, hint)
        finally:
            self._lock_users[session] -= 1
            if not self._lock_users[session]:
                del self._lock_users[session]
                self._locks.pop(session, None)

    async def _step_locked(self, session: str, make_event: Callable[[Snapshot], Event],
                           dedup_id: str | None, hint: bool) -> Outcome:
        pause = 0.002
        # Not after a failed publish of ours: that outbox must go out first.
        cached = self._cache.get(session) if session not in self._unsent else None
        while True:
            fast = cached is not None and self._fast.use()
            if fast:
                # Fast path: no load. The commit's compare-and-set on the version (and its
                # refusal of a remembered message id) proves the cached record current.
                assert cached is not None
                version, record = cached
                snap = Snapshot(version, None)
            else:
                snap = await self.store.load(session, dedup_id)
                record = Record.decode(snap.record) if snap.record is not None else None
            cached = None
            event = make_event(snap)
            if snap.outbox and record is not None and session not in self._unsent and (
                    self.clock() * 1000 - record.stamp_ms < LEFTOVER_GRACE_MS):
                # Most likely another replica is publishing these right now and will discard
                # them in a moment: re-sending would only make copies. Look again shortly.
                self.stats["leftover_waits"] += 1
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.1)
                continue
            if snap.outbox:
                # Leftovers of a step that committed but may not have published (a crash, a
                # lost connection, or another replica still at it): they go out first. The
                # dispatch a reply answers evidently arrived: it is not sent again.
                answered = event.turn if isinstance(event, ReplyArrived) else None
                await self._deliver(session, record, snap.outbox, answered=answered)
                continue
            now = int(self.clock() * 1000)
            out = core.step(record, session, event, now, self.ids, self.cfg)
            if not out.changed:
                if fast:
                    continue  # "nothing to do" from a cached record is not proof: load
                self._cache.put(session, snap.version, record)
                return out
            assert out.record is not None
            new = out.record
            due = new.due_ms(self.cfg)
            old_due = record.due_ms(self.cfg) if record is not None else None
            encoded = [e.encode() for e in out.effects]
            keep = self.config.history
            self._unsent.add(session)  # if the commit's answer is lost, retry without grace
            applied = await self.store.commit(
                session, snap.version, new.encode(), append=encoded, remember=out.remember,
                expire_at_ms=new.expire_at_ms(self.cfg),
                hint_ms=due if hint and due is not None and due != old_due else None,
                history=history.entries(record, event, out, now) if keep else (),
                history_max=keep)
            if fast:
                self._fast.outcome(applied)
            if not applied:
                self._unsent.discard(session)
                self._cache.drop(session)
                self.stats["cas_retries"] += 1
                continue
            self._cache.put(session, snap.version + 1, new)
            self.stats["steps"] += 1
            # A deadline just cleared: drop its hint now rather than let the scanner find it.
            unhint = old_due if hint and due is None else None
            await self._deliver(session, new, encoded, unhint_ms=unhint)
            return out

    async def _deliver(self, session: str, record: Record | None, encoded: list[bytes], *,
                       answered: str | None = None, unhint_ms: int | None = None) -> None:
        """Publish outbox entries (notices and dead letters first), then discard them."""
        self._unsent.add(session)
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
                    log.info("event=notice_dropped session=%s queue=%s (no such queue)",
                             session, effect.queue)
        returned: list[Effect] = []
        if second:
            routed = await self.broker.publish([_outgoing(e) for e in second])
            returned = [e for e, ok in zip(second, routed, strict=True) if not ok]
            self.stats["dispatches"] += len(second) - len(returned)
        await self.store.discard(session, encoded, unhint_ms=unhint_ms)
        self._unsent.discard(session)
        for effect in returned:
            assert effect.turn is not None
            log.info("event=dispatch_returned session=%s queue=%s", session, effect.queue)
            returned_event: Event = Undeliverable(effect.turn, effect.attempt)
            await self._step_locked(session, _constant(returned_event), None, True)

    # ------------------------------------------------------------------ deadlines

    async def _scan_loop(self) -> None:
        period = min(0.1, self.config.turn_timeout / 4, max(self.config.seq_hold / 4, 0.01))
        while not self._stopping.is_set():
            try:
                claimed = await self.store.claim_due(int(self.clock() * 1000), LEASE_MS)
                if claimed:
                    await asyncio.gather(*(self._fire(s, lease) for s, lease in claimed))
                    continue
                self._store_ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._store_error(exc)
                log.warning("event=scan_failed error=%r", exc)
                await asyncio.sleep(1.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), period)

    async def _fire(self, session: str, lease: int) -> None:
        try:
            out = await self.run_step(session, lambda snap: Tick(), hint=False)
            due = out.record.due_ms(self.cfg) if out.record is not None else None
            await self.store.settle_hint(session, lease, due)
        except Exception as exc:  # the lease makes it fire again later
            log.warning("event=deadline_failed session=%s error=%r", session, exc)


class _RecordCache:
    """The records this replica last wrote or read, to skip the load of the next step.

    Only a hint: a stale entry makes the commit's compare-and-set fail, and the step then
    loads. Entries expire quickly (a session that expired in Redis restarts at version 0).
    """

    def __init__(self, max_age: float, size: int = 10_000) -> None:
        self.max_age = max_age
        self.size = size
        self._entries: OrderedDict[str, tuple[int, Record | None, float]] = OrderedDict()

    def get(self, session: str) -> tuple[int, Record | None] | None:
        entry = self._entries.get(session)
        if entry is None:
            return None
        if time.monotonic() - entry[2] > self.max_age:
            del self._entries[session]
            return None
        return entry[0], entry[1]

    def put(self, session: str, version: int, record: Record | None) -> None:
        self._entries[session] = (version, record, time.monotonic())
        self._entries.move_to_end(session)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, session: str) -> None:
        self._entries.pop(session, None)


class _FastPathGate:
    """Whether skipping the load pays: with several replicas sharing sessions, cached
    records are often stale and a failed commit costs more than the load it saved."""

    def __init__(self) -> None:
        self.score = 1.0
        self._skipped = 0

    def use(self) -> bool:
        if self.score >= 0.5:
            return True
        self._skipped += 1
        if self._skipped >= 32:  # probe now and then: the replicas may have changed
            self._skipped = 0
            return True
        return False

    def outcome(self, applied: bool) -> None:
        self.score = 0.9 * self.score + (0.1 if applied else 0.0)


def _constant(event: Event) -> Callable[[Snapshot], Event]:
    return lambda snap: event


def _outgoing(effect: Effect) -> Outgoing:
    return Outgoing(effect.queue, effect.body, effect.message_id, effect.headers)
