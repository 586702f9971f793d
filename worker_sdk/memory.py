"""The broker port in process: queues in a dict, for the embedded engine and tests.

It mimics RabbitMQ where the other parties can notice: a publish to a missing queue is
returned (False), unacknowledged deliveries go back to the head of their queue with the
redelivered flag, a consumer holds at most ``prefetch`` unsettled deliveries, a re-declare
with other arguments fails, and a queue declared with ``expires`` is deleted once it has had
no consumer (and no re-declare) for that long, as RabbitMQ's ``x-expires`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from .broker import Handler, Outgoing, Published, refusal
from .errors import ConfigError, PublishFailed

log = logging.getLogger(__name__)


@dataclass
class _Message:
    body: bytes
    message_id: str | None
    headers: dict[str, str]
    redelivered: bool = False
    reply_to: str | None = None


@dataclass
class _Queue:
    name: str
    arguments: dict[str, Any] | None
    durable: bool
    ready: deque[_Message] = field(default_factory=deque)
    consumers: list[_Consumer] = field(default_factory=list)
    expiry: asyncio.TimerHandle | None = None
    """The pending deletion of an idle queue with ``x-expires``."""

    @property
    def expires(self) -> float | None:
        """Seconds of disuse after which the queue is deleted (``x-expires``), or None."""
        ms = (self.arguments or {}).get("x-expires")
        return None if ms is None else ms / 1000

    @property
    def single_active(self) -> bool:
        """Only the first consumer gets messages (``x-single-active-consumer``)."""
        return bool((self.arguments or {}).get("x-single-active-consumer"))

    def notify(self) -> None:
        """Wake the consumers: a message arrived or a prefetch slot was freed."""
        for consumer in self.consumers:
            consumer.kick.set()


class MemoryDelivery:
    """A delivery from a :class:`MemoryBroker`; ack/reject are idempotent."""

    __slots__ = ("_consumer", "_message", "_settled")

    def __init__(self, consumer: _Consumer, message: _Message) -> None:
        self._consumer = consumer
        self._message = message
        self._settled = False

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def message_id(self) -> str | None:
        return self._message.message_id

    @property
    def redelivered(self) -> bool:
        return self._message.redelivered

    @property
    def reply_to(self) -> str | None:
        return self._message.reply_to

    @property
    def headers(self) -> dict[str, str]:
        return dict(self._message.headers)

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        self._consumer.settle(self, requeue=False)

    async def reject(self, requeue: bool = True) -> None:
        if self._settled:
            return
        self._settled = True
        self._consumer.settle(self, requeue=requeue)

    def _orphan(self) -> _Message | None:
        """Take the message back from a consumer that stops; later ack/reject do nothing."""
        if self._settled:
            return None
        self._settled = True
        return self._message


class _Work:
    """What :meth:`MemoryBroker.join` waits on, shared by every connection to the queues:
    ``changed`` is set whenever a delivery is settled or a handler returns."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()


class _Consumer:
    """Feeds one queue's messages to a handler, at most ``prefetch`` unsettled at once."""

    def __init__(self, queue: _Queue, handler: Handler, prefetch: int, work: _Work) -> None:
        self.queue = queue
        self.work = work
        self.handler = handler
        self.prefetch = max(1, prefetch)
        self.unsettled: dict[int, MemoryDelivery] = {}
        self.inflight: set[asyncio.Task[None]] = set()
        self.stopped = False
        self.kick = asyncio.Event()
        self.task: asyncio.Task[None] = asyncio.create_task(self._run(),
                                                            name=f"consume {queue.name}")

    async def _run(self) -> None:
        queue = self.queue
        while not self.stopped:
            # No await between the check and the pop: nothing else can take the message.
            if not queue.ready or len(self.unsettled) >= self.prefetch or (
                    queue.single_active and queue.consumers[0] is not self):
                self.kick.clear()
                await self.kick.wait()
                continue
            message = queue.ready.popleft()
            delivery = MemoryDelivery(self, message)
            self.unsettled[id(delivery)] = delivery
            task = asyncio.create_task(self._handle(delivery))
            self.inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self.work.changed.set()

    @property
    def busy(self) -> bool:
        """Whether this consumer has work: a message to take, or one being handled."""
        ready = bool(self.queue.ready) and len(self.unsettled) < self.prefetch
        return ready or bool(self.unsettled) or bool(self.inflight)

    async def _handle(self, delivery: MemoryDelivery) -> None:
        try:
            await self.handler(delivery)
        except Exception:
            log.exception("event=handler_failed queue=%s message_id=%s", self.queue.name,
                          delivery.message_id)
            await delivery.reject(requeue=True)

    def settle(self, delivery: MemoryDelivery, *, requeue: bool) -> None:
        if self.unsettled.pop(id(delivery), None) is None:
            return
        self.work.changed.set()
        if requeue:
            message = delivery._message
            message.redelivered = True
            self.queue.ready.appendleft(message)
        self.queue.notify()

    async def stop(self, drain: float) -> None:
        """Stop taking messages, let running handlers finish, hand back the unsettled."""
        self.stopped = True
        self.kick.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.inflight and drain > 0:
            await asyncio.wait(set(self.inflight), timeout=drain)
        for task in list(self.inflight):
            task.cancel()
        if self.inflight:
            await asyncio.wait(set(self.inflight))
        # Like a closed channel: unacknowledged messages return, in order, to the head.
        returned = [m for d in self.unsettled.values() if (m := d._orphan()) is not None]
        self.unsettled.clear()
        for message in reversed(returned):
            message.redelivered = True
            self.queue.ready.appendleft(message)
        if returned:
            self.queue.notify()


def _expiry(expires: float | None) -> dict[str, Any] | None:
    return None if expires is None else {"x-expires": max(1, round(expires * 1000))}


class MemoryBroker:
    """An in-process broker with the semantics of :class:`worker_sdk.amqp.AmqpBroker`."""

    def __init__(self, queue_type: str = "quorum") -> None:
        self.queue_type = queue_type
        self._queues: dict[str, _Queue] = {}
        self._exchanges: dict[str, dict[str, str]] = {}
        """Direct exchanges: routing key -> bound queue."""
        self._consumers: dict[str, list[_Consumer]] = {}
        self._closed = False
        self._lost: asyncio.Event | None = None
        self._work = _Work()

    def connection(self) -> MemoryBroker:
        """Another connection to the same queues, as a second process would have."""
        other = MemoryBroker(self.queue_type)
        other._queues = self._queues
        other._exchanges = self._exchanges
        other._work = self._work
        return other

    async def join(self, timeout: float | None = None, *,
                   queues: Collection[str] | None = None) -> None:
        """Return once every message published to a consumed queue has been delivered and
        handled (acknowledged or rejected, and its handler returned), on every connection
        to these queues; work a handler causes is waited for too. Messages of queues
        nobody consumes (the dead letters, say) do not count; with ``queues``, only those
        queues count. Raise TimeoutError after ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                # A consumer's loop is a task of its own: let it take what was just published.
                for _ in range(3):
                    await asyncio.sleep(0)
                if not self._busy(queues):
                    return
                self._work.changed.clear()
                if not self._busy(queues):
                    return
                await self._work.changed.wait()

    def _busy(self, queues: Collection[str] | None = None) -> bool:
        return any(c.busy for q in self._queues.values() for c in q.consumers
                   if queues is None or q.name in queues)

    async def connect(self) -> None:
        self._closed = False

    async def close(self) -> None:
        for queue in list(self._consumers):
            await self.cancel(queue, drain=0)
        self._closed = True

    def is_connected(self) -> bool:
        return not self._closed

    def on_state(self, callback: Callable[[bool], None]) -> None:
        """Never called: an in-process broker is never lost."""

    async def wait_lost(self) -> None:
        """Never returns by itself: an in-process broker cannot be lost."""
        if self._lost is None:
            self._lost = asyncio.Event()
        await self._lost.wait()

    async def declare(self, queue: str) -> None:
        self._declare(queue, {"x-queue-type": self.queue_type}, durable=True)

    async def declare_own(self, queue: str, *, durable: bool = True,
                          expires: float | None = None,
                          single_active: bool = False, replicated: bool = False) -> None:
        # Kept as arguments, as RabbitMQ keeps them: a re-declare with other settings fails.
        # One consumer per queue makes single_active moot in one process.
        arguments = _expiry(expires) or {}
        if replicated:
            arguments["x-queue-type"] = self.queue_type
        if single_active:
            arguments["x-single-active-consumer"] = True
        self._declare(queue, arguments or None, durable=durable)

    def _declare(self, name: str, arguments: dict[str, Any] | None, *, durable: bool) -> None:
        existing = self._queues.get(name)
        if existing is None:
            self._queues[name] = existing = _Queue(name, arguments, durable)
        elif (existing.arguments or {}) != (arguments or {}) or existing.durable != durable:
            raise ConfigError(f"queue {name!r} already exists with other settings "
                              f"({existing.arguments} vs {arguments}); every party must use "
                              "the same CLOUDBUNCH_QUEUE_TYPE")
        self._arm_expiry(existing)  # a declare is a use: the idle time starts again

    def _arm_expiry(self, queue: _Queue) -> None:
        """Delete ``queue`` after its ``x-expires`` unless a consumer comes first.

        As in RabbitMQ, a queue is in use while it has a consumer, and a declare (a passive
        one too) renews it; publishing to it does not.
        """
        if queue.expiry is not None:
            queue.expiry.cancel()
            queue.expiry = None
        if queue.expires is None or queue.consumers:
            return
        queue.expiry = asyncio.get_running_loop().call_later(queue.expires, self._expire, queue)

    def _expire(self, queue: _Queue) -> None:
        queue.expiry = None
        if queue.consumers or self._queues.get(queue.name) is not queue:
            return
        log.debug("event=queue_expired queue=%s", queue.name)
        self._remove(queue.name)

    def _remove(self, name: str) -> None:
        """Forget a queue and its bindings (the broker drops both together)."""
        queue = self._queues.pop(name, None)
        if queue is not None and queue.expiry is not None:
            queue.expiry.cancel()
            queue.expiry = None
        for bindings in self._exchanges.values():
            for key in [k for k, bound in bindings.items() if bound == name]:
                del bindings[key]

    async def delete(self, queue: str) -> None:
        # The broker cancels the consumers of a deleted queue.
        await self.cancel(queue, drain=0)
        self._remove(queue)

    async def bind(self, exchange: str, routing_key: str, queue: str) -> None:
        self._exchanges.setdefault(exchange, {})[routing_key] = queue

    async def publish(self, messages: Sequence[Outgoing]) -> list[Published]:
        if self._closed:
            raise PublishFailed("the broker connection is closed")
        results: list[Published] = []
        touched: dict[str, _Queue] = {}
        for message in messages:
            refused = refusal(message)
            if refused is not None:
                results.append(refused)
                continue
            name: str | None = message.queue
            if message.exchange:
                name = self._exchanges.get(message.exchange, {}).get(message.queue)
            queue = None if name is None else self._queues.get(name)
            if queue is None:
                results.append(False)
                continue
            queue.ready.append(_Message(message.body, message.message_id,
                                        dict(message.headers), reply_to=message.reply_to))
            touched[queue.name] = queue
            results.append(True)
        for queue in touched.values():
            queue.notify()
        # Yield once, as a real publish would, so consumers get to run.
        await asyncio.sleep(0)
        return results

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> None:
        target = self._queues.get(queue)
        if target is None:
            raise ConfigError(f"cannot consume {queue!r}: no such queue (declare it first)")
        if queue in self._consumers:
            raise ConfigError(f"already consuming {queue!r} on this connection")
        consumer = _Consumer(target, handler, prefetch, self._work)
        target.consumers.append(consumer)
        self._arm_expiry(target)  # consumed: no longer idle
        target.notify()
        self._consumers[queue] = [consumer]

    async def cancel(self, queue: str, *, drain: float = 8.0) -> None:
        for consumer in self._consumers.pop(queue, []):
            # Out of the queue's consumers first: with a single active consumer, the next
            # one takes over at once, as on RabbitMQ.
            with contextlib.suppress(ValueError):
                consumer.queue.consumers.remove(consumer)
            consumer.queue.notify()
            await consumer.stop(drain)
            if self._queues.get(queue) is consumer.queue:
                self._arm_expiry(consumer.queue)  # its last consumer gone: idle from now

    def _passive(self, queue: str) -> _Queue | None:
        # RabbitMQ answers these with a passive declare, which renews an x-expires lease.
        target = self._queues.get(queue)
        if target is not None:
            self._arm_expiry(target)
        return target

    async def queue_exists(self, queue: str) -> bool:
        return self._passive(queue) is not None

    async def consumer_count(self, queue: str) -> int:
        target = self._passive(queue)
        return 0 if target is None else len(target.consumers)

    async def message_count(self, queue: str) -> int:
        target = self._passive(queue)
        return 0 if target is None else len(target.ready)

    def messages(self, queue: str) -> list[bytes]:
        """The ready (not delivered) message bodies of ``queue``, head first."""
        target = self._queues.get(queue)
        return [] if target is None else [m.body for m in target.ready]

    def headers(self, queue: str) -> list[dict[str, str]]:
        """The headers of the ready messages of ``queue``, head first."""
        target = self._queues.get(queue)
        return [] if target is None else [dict(m.headers) for m in target.ready]

    def queues(self) -> list[str]:
        """The names of the declared queues."""
        return sorted(self._queues)

