"""The router's shell: one replica's consumers, health and lifecycle, wired to its parts.

The parts, one job each: ``ingest`` (pure: a body -> an event or a dead letter), ``stepper``
(one event for one session: load -> leftovers first -> core -> commit -> deliver), ``outbox``
(publish what a commit owes, then discard it) and ``scanner`` (fire due deadlines). A crash
anywhere in a step is repaired by redelivery or by the deadline scanner: the leftover outbox
is published first, and the core drops the redelivered event as already applied (dedup id,
fencing token).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential

from worker_sdk import tracing, wire
from worker_sdk.broker import Broker, Delivery
from worker_sdk.errors import PublishFailed

from . import ingest
from .config import RouterConfig
from .core import ClientArrived, Event, Outcome
from .ingest import DeadLetter, DeadReason
from .outbox import Outbox
from .partitions import PartitionQueue, Partitions, partition_queues
from .scanner import Scanner
from .stepper import Stepper
from .store import SessionStore, Snapshot, StoreUnavailable

if TYPE_CHECKING:
    from .metrics import RouterMetrics

log = logging.getLogger(__name__)

RETRY_FOR_S = 20.0
"""How long a delivery's step is retried on store or broker errors before it is handed back."""


def new_id() -> str:
    """An unguessable id for turns and notices (22 characters)."""
    return secrets.token_urlsafe(16)


def _transient(exc: BaseException) -> bool:
    """A failure of the world (store, broker, network) rather than of the router itself."""
    return isinstance(exc, (StoreUnavailable, PublishFailed, ConnectionError, OSError,
                            TimeoutError))


class Router:
    """One router replica. Any number may run against the same broker and store."""

    def __init__(self, config: RouterConfig, broker: Broker, store: SessionStore, *,
                 clock: Callable[[], float] = time.time,
                 ids: Callable[[], str] = new_id, scan: bool = True,
                 metrics: RouterMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics
        """Prometheus metrics (router.metrics), or None: not measured."""
        self._consuming = False
        self.cfg = config.core()
        self.broker = broker
        self.store = store
        self.clock = clock
        names = wire.queue_names(config.namespace)
        self.ingress, self.replies, self.dead = names["ingress"], names["replies"], names["dead"]
        self.stats: Counter[str] = Counter()
        self.outbox = Outbox(broker, store, self.dead, self.stats, metrics=metrics,
                             namespace=config.namespace, partitions=config.partitions)
        self.partitions = (Partitions(config.partitions, new_id(), store, broker,
                                      stats=self.stats, clock=clock, metrics=metrics)
                           if config.partitions else None)
        """The partitioned ingress (``--partitions``), or None: the shared queues only."""
        self._partition_queues = partition_queues(config.namespace, config.partitions)
        self.stepper = Stepper(store, self.outbox, self.cfg, clock=clock, ids=ids,
                               stats=self.stats, cache_age=min(5.0, config.session_ttl / 4),
                               history_max=config.history, metrics=metrics)
        self.scanner = Scanner(
            store, self.stepper.run, self.cfg, clock=clock, health=self._health,
            period=min(0.1, config.turn_timeout / 4, max(config.seq_hold / 4, 0.01)),
            stats=self.stats)
        self._scan = scan
        """False: no scanning task; whoever owns the clock calls :meth:`fire_due`."""
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._scanning: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None
        """Set when the replica cannot go on (store lost for good)."""
        self._failed = asyncio.Event()
        self._store_down_since: float | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Declare the shared queues, start consuming and scanning deadlines."""
        for queue in (self.ingress, self.replies, self.dead):
            await self.broker.declare(queue)
        # Frontends and services publish through these, so that broker permissions can
        # limit each of them to reaching the router (PROTOCOL.md, "Transport").
        exchanges = wire.exchange_names(self.config.namespace)
        await self.broker.bind(exchanges["ingress"], wire.INGRESS_KEY, self.ingress)
        await self.broker.bind(exchanges["replies"], wire.REPLIES_KEY, self.replies)
        if self._scan:
            self._scanning = asyncio.create_task(self.scanner.run(self._stopping),
                                                 name="cloudbunch-scanner")
        for queue, handler in ((self.ingress, self.on_ingress), (self.replies, self.on_reply)):
            await self.broker.consume(queue, self._guard(handler, queue), prefetch=64)
        if self.partitions is not None:
            await self._start_partitions(self.partitions, exchanges)
        self._consuming = True
        log.info("event=router_started namespace=%s root=%s", self.config.namespace,
                 self.config.root)

    async def _start_partitions(self, partitions: Partitions,
                                exchanges: dict[str, str]) -> None:
        """Declare, bind and consume every partition's queues (single active consumer)."""
        await partitions.start()
        queues = self._partition_queues
        # Named in the store, so that `cloudbunch purge` finds them.
        await self.store.note_queues([q.name for q in queues])
        for queue in queues:
            await self.broker.declare_own(queue.name, single_active=True, replicated=True)
            await self.broker.bind(exchanges[queue.kind], queue.key, queue.name)
        for queue in queues:
            handler = self.on_ingress if queue.kind == "ingress" else self.on_reply
            await partitions.consume(queue, self._guard(self._partition(handler, queue),
                                                        queue.name, queue.kind), prefetch=64)

    def _partition(self, handler: Callable[..., Any],
                   queue: PartitionQueue) -> Callable[[Delivery], Any]:
        """``handler`` for a partition's queue: then hand the queue to its owner if need be."""
        partitions = self.partitions
        assert partitions is not None

        async def on_partition(delivery: Delivery) -> None:
            session = await handler(delivery, queue.name)
            partitions.delivered(queue, session)
        return on_partition

    async def stop(self, grace: float = 7.0) -> None:
        """Stop consuming, let in-flight steps finish (up to ``grace`` s), stop the scanner."""
        self._stopping.set()
        self._consuming = False
        queues = [self.ingress, self.replies, *(q.name for q in self._partition_queues)]
        if self.partitions is not None:
            await self.partitions.stop()
        await asyncio.gather(*(self.broker.cancel(q, drain=grace) for q in queues),
                             return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 0.5)
        if self._scanning is not None:
            self._scanning.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._scanning
        log.info("event=router_stopped %s", " ".join(f"{k}={v}" for k, v in
                                                      sorted(self.stats.items())))

    def not_ready(self) -> str | None:
        """Why this replica should get no traffic now (None: ready): /readyz."""
        if not self._consuming:
            return "not consuming (starting or stopping)"
        if not self.broker.is_connected():
            return "not connected to RabbitMQ (reconnecting)"
        if self._store_down_since is not None:
            return "Redis is not answering (retrying)"
        return None

    async def fire_due(self) -> int:
        """Fire the deadlines and idle timers due now (one scanner pass); how many sessions."""
        return await self.scanner.fire_due()

    async def wait_failed(self) -> None:
        """Return when the replica cannot go on (the store stayed unreachable)."""
        await self._failed.wait()

    # ------------------------------------------------------------------ consumers

    async def on_ingress(self, delivery: Delivery, queue: str | None = None) -> str | None:
        """One client message from ``NS.ingress`` (or ``queue``, a partition's); the session
        it was for (None: a dead letter)."""
        queue = queue or self.ingress
        session = None
        got = ingest.client_message(delivery.body, self.config.max_body, queue,
                                    wire.trace_context(delivery.headers))
        if isinstance(got, DeadLetter):
            await self.outbox.dead_letter(got)
        else:
            message = got
            session = message.session
            # The step's span: a consumer of the client message, child of the sender's span.
            with tracing.start_span(
                    f"process {queue}", "consumer", delivery.headers,
                    tracing.messaging("process", queue, message_id=message.id,
                                      routing_key=wire.INGRESS_KEY, session=message.session)):
                out = await self.run_step(message.session,
                                          lambda snap: ClientArrived(message, snap.seen),
                                          dedup_id=message.id)
            if out.dropped and self.metrics is not None:
                self.metrics.duplicates.inc()
            self.stats["client_messages"] += 1
        await delivery.ack()
        return session

    async def on_reply(self, delivery: Delivery, queue: str | None = None) -> str | None:
        """One service reply from ``NS.replies`` (or ``queue``, a partition's); the session
        it was for (None: a dead letter)."""
        queue = queue or self.replies
        session = None
        got = ingest.reply(delivery.body, self.config.max_body, queue)
        if isinstance(got, DeadLetter):
            await self.outbox.dead_letter(got)
        else:
            event = got.event
            session = got.session
            # The step's span: a consumer of the reply, child of the reply's span.
            with tracing.start_span(
                    f"process {queue}", "consumer", delivery.headers,
                    tracing.messaging("process", queue, message_id=delivery.message_id,
                                      routing_key=wire.REPLIES_KEY, session=got.session,
                                      turn=event.turn,
                                      action=event.reply.action if event.reply else None)):
                out = await self.run_step(got.session, lambda snap: event)
            if out.dropped:
                self.stats["replies_dropped"] += 1
                if self.metrics is not None:
                    self.metrics.fenced.inc()
                log.info("event=reply_dropped session=%s turn=%s why=%r", got.session,
                         event.turn, out.dropped)
        await delivery.ack()
        return session

    async def run_step(self, session: str, make_event: Callable[[Snapshot], Event], *,
                       dedup_id: str | None = None, hint: bool = True) -> Outcome:
        """Apply one event to a session, durably, and publish what it causes."""
        return await self.stepper.run(session, make_event, dedup_id=dedup_id, hint=hint)

    def _guard(self, handler: Callable[[Delivery], Any], source: str,
               label: str | None = None) -> Callable[[Delivery], Any]:
        """Run a consumer's handler: retry transient failures, then hand the delivery back;
        dead-letter one that hits a router bug. ``label``: the queue's role in metrics
        (default: the last part of its name, ``ingress`` or ``replies``)."""
        label = label or source.rsplit(".", 1)[-1]

        async def guarded(delivery: Delivery) -> None:
            if self.metrics is not None:
                self.metrics.deliveries.labels(label).inc()
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
                self._health(None)
            except Exception as exc:
                if _transient(exc):
                    self._health(exc)
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
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            problem = wire.BadBody("invalid", detail)
            await self.outbox.dead_letter(ingest.dead_letter(delivery.body, problem, source,
                                                             reason=DeadReason.INTERNAL))
        except Exception:
            log.exception("event=dead_letter_failed queue=%s", source)
            await delivery.reject(requeue=True)
            return
        await delivery.ack()

    # ------------------------------------------------------------------ health

    def _health(self, error: BaseException | None) -> None:
        """Note a step or scan that reached the store (``None``) or one the store failed;
        fail the replica when the store stays unreachable for 30 s. Broker failures do not
        count here: the broker adapter gives up on its own (``Broker.wait_lost``)."""
        if error is None:
            self._store_down_since = None
            if self.metrics is not None:
                self.metrics.dependency("redis", True)
            return
        if not isinstance(error, StoreUnavailable):
            return
        if self.metrics is not None:
            self.metrics.dependency("redis", False)
        now = time.monotonic()
        if self._store_down_since is None:
            self._store_down_since = now
        elif now - self._store_down_since > 30:
            self.failure = error
            self._failed.set()
