"""Partitioned ingress (``--partitions N``): which replica owns each partition, and handing
a partition over to its owner.

Sessions hash to N partitions (:func:`worker_sdk.wire.partition_of`). Partition P has an
ingress queue ``NS.ingress.P`` and a replies queue ``NS.replies.P``, both with a single
active consumer: every replica consumes every partition, RabbitMQ delivers a queue's
messages to one of its consumers at a time and passes the queue to the next one when that
one goes (a crash, a lost connection). Failover needs nothing from the replicas.

Which consumer is active is the order they registered in, so on its own the first replica
to start would own every partition. The replicas therefore agree on an assignment: each
says in the store, every second, that it is alive, and partition P belongs to the
(P mod R)-th of the R live replicas in sorted order. A replica that gets a delivery on a
partition assigned to another hands it over: it cancels its consumer and consumes again,
which puts it at the back of the queue's consumers, so the next one becomes active; after
at most R - 1 handovers the owner is. Ownership only saves work (the owner's record cache
is then right, so its steps skip the load and never lose a compare-and-set to another
replica); no guarantee depends on it: a step is a compare-and-set on the session's
version, whichever replica runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker_sdk import wire
from worker_sdk.broker import Broker, Handler

from .store import SessionStore, StoreUnavailable

if TYPE_CHECKING:
    from .metrics import RouterMetrics

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
"""How often a replica says it is alive (and learns who else is)."""
ALIVE_S = 5.0
"""How long a replica counts as alive after it last said so (by the clocks of the replicas,
which must agree to within a second or so, as deadlines already require)."""
HANDOVER_EVERY_S = 2.0
"""The least time between two handovers of one queue by one replica (when the owner is not
consuming yet, the queue comes straight back: this bounds the churn)."""
MISROUTED_EVERY_S = 60.0
"""The least time between two warnings about messages in another partition's queue."""
DRAIN_S = 5.0
"""How long a handover waits for the deliveries it holds to be stepped before handing the
rest back to the queue."""


def owner(partition: int, replicas: Sequence[str]) -> str | None:
    """The replica that owns ``partition`` among the live ``replicas`` (None: none)."""
    if not replicas:
        return None
    ordered = sorted(replicas)
    return ordered[partition % len(ordered)]


@dataclass(frozen=True, slots=True)
class PartitionQueue:
    """One queue of one partition."""

    kind: str
    """``ingress`` or ``replies``."""
    partition: int
    name: str
    """The queue: ``NS.ingress.3``."""
    key: str
    """Its routing key on the kind's exchange: ``ingress.3``."""


def partition_queues(namespace: str, count: int) -> list[PartitionQueue]:
    """Every queue of a namespace of ``count`` partitions."""
    out = []
    for kind in ("ingress", "replies"):
        for p in range(count):
            key = wire.partition_key(kind, p)
            out.append(PartitionQueue(kind, p, f"{namespace}.{key}", key))
    return out


class Partitions:
    """One replica's side of the partitions: its heartbeat and its handovers."""

    def __init__(self, count: int, replica: str, store: SessionStore, broker: Broker, *,
                 stats: Counter[str], clock: Callable[[], float] = time.time,
                 metrics: RouterMetrics | None = None) -> None:
        self.count = count
        self.metrics = metrics
        self.replica = f"{replica}/{count}"
        """This replica's id in the store: its own id and its ``--partitions``."""
        self.store = store
        self.broker = broker
        self.stats = stats
        self.clock = clock
        self.live: list[str] = [self.replica]
        """The live replicas, as last heard from the store (this one until then)."""
        self._handlers: dict[str, tuple[Handler, int]] = {}
        self._last_handover: dict[str, float] = {}
        self._handovers: set[asyncio.Task[None]] = set()
        self._beating: asyncio.Task[None] | None = None
        self._stopping = False
        self._misrouted_said = -MISROUTED_EVERY_S
        self._mismatch_said: frozenset[str] = frozenset()

    def owns(self, partition: int) -> bool:
        """Whether this replica owns ``partition`` (as far as it knows now)."""
        return owner(partition, self.live) == self.replica

    async def consume(self, queue: PartitionQueue, handler: Handler, *, prefetch: int) -> None:
        """Consume a partition's queue; handovers consume it again with the same handler."""
        self._handlers[queue.name] = (handler, prefetch)
        await self.broker.consume(queue.name, handler, prefetch=prefetch)

    async def start(self) -> None:
        """Say this replica is alive, learn who else is, and keep doing so."""
        await self._beat()
        self._beating = asyncio.create_task(self._beat_forever(), name="cloudbunch-heartbeat")

    async def stop(self) -> None:
        """Stop the heartbeat and the handovers under way; tell the store this replica left,
        so that the others take its partitions at once."""
        self._stopping = True
        for task in [self._beating, *self._handovers]:
            if task is not None:
                task.cancel()
        for task in [self._beating, *self._handovers]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        with contextlib.suppress(StoreUnavailable):
            await self.store.replicas(self.replica, self._now_ms(), 0)

    def delivered(self, queue: PartitionQueue, session: str | None = None) -> None:
        """A delivery from ``queue`` (for ``session``) was handled here: hand the queue over
        if it is another's (at most once per ``HANDOVER_EVERY_S``)."""
        if session is not None and wire.partition_of(session, self.count) != queue.partition:
            self._misrouted(queue, session)
        if self._stopping or self.owns(queue.partition):
            return
        now = time.monotonic()
        if now - self._last_handover.get(queue.name, -HANDOVER_EVERY_S) < HANDOVER_EVERY_S:
            return
        self._last_handover[queue.name] = now
        task = asyncio.create_task(self._hand_over(queue), name=f"handover {queue.name}")
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    def _misrouted(self, queue: PartitionQueue, session: str) -> None:
        """A message in another partition's queue than its session's: served all the same,
        but its sender counts partitions differently. Said once a minute at most."""
        self.stats["misrouted"] += 1
        now = time.monotonic()
        if now - self._misrouted_said < MISROUTED_EVERY_S:
            return
        self._misrouted_said = now
        sender = "a frontend" if queue.kind == "ingress" else "a service"
        log.warning("event=partition_mismatch queue=%s session=%r belongs to partition %d of "
                    "%d: %s uses another --partitions than this router; set the same "
                    "CLOUDBUNCH_PARTITIONS everywhere (served all the same, only not by the "
                    "session's owner)", queue.name, session[:80],
                    wire.partition_of(session, self.count), self.count, sender)

    async def _hand_over(self, queue: PartitionQueue) -> None:
        handler, prefetch = self._handlers[queue.name]
        self.stats["handovers"] += 1
        if self.metrics is not None:
            self.metrics.handovers.inc()
        log.info("event=partition_handover queue=%s owner=%s", queue.name,
                 owner(queue.partition, self.live))
        await self.broker.cancel(queue.name, drain=DRAIN_S)
        # Back of the queue's consumers: a standby, should the owner go.
        while not self._stopping:
            try:
                await self.broker.consume(queue.name, handler, prefetch=prefetch)
                return
            except Exception as exc:  # the broker is away: keep trying, as a standby
                log.warning("event=partition_consume_failed queue=%s reason=%s", queue.name,
                            exc)
                await asyncio.sleep(HEARTBEAT_S)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def _beat(self) -> None:
        try:
            live = await self.store.replicas(self.replica, self._now_ms(), round(ALIVE_S * 1000))
        except StoreUnavailable as exc:
            log.debug("event=heartbeat_failed reason=%s", exc)
            return
        suffix = f"/{self.count}"
        others = frozenset(r for r in live if not r.endswith(suffix))
        if others and others != self._mismatch_said:
            counts = sorted({r.rpartition("/")[2] for r in others})
            log.warning("event=partitions_mismatch %d other router replica(s) run with "
                        "--partitions %s, this one with %d: every router of a namespace must "
                        "use the same (CLOUDBUNCH_PARTITIONS); until then each owns partitions "
                        "among its like only", len(others), " and ".join(counts), self.count)
        self._mismatch_said = others
        # Partitions are shared out among the replicas that count them alike.
        live = [r for r in live if r.endswith(suffix)]
        if live != self.live:
            log.info("event=replicas_changed replicas=%d owned=%s", len(live),
                     ",".join(str(p) for p in range(self.count) if owner(p, live) == self.replica))
        self.live = live or [self.replica]
        if self.metrics is not None:
            self.metrics.replicas.set(len(self.live))
            self.metrics.partitions_owned.set(sum(map(self.owns, range(self.count))))

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._beat()
            except Exception as exc:  # keep beating: a dead heartbeat would hand this
                # replica's partitions to the others while it still serves them
                log.warning("event=heartbeat_failed reason=%r", exc)
