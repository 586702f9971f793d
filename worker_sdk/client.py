"""The frontend side: send a person's messages to the router and receive the notices."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from . import tracing, wire
from .broker import Broker, Delivery, Outgoing, Refused, publish_or_fall_back
from .errors import ConfigError, MessageRefused, NoRouter
from .settings import Settings

log = logging.getLogger(__name__)

DEFAULT_REPLY_QUEUE_EXPIRES = 600.0
"""Seconds without a consumer after which the broker deletes a generated reply queue."""

_END: Any = object()  # pushed to subscribers when the client closes


class _Subscription:
    """One consumer of notices: all of them (session None) or one session's."""

    def __init__(self, session: str | None) -> None:
        self.session = session
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def wants(self, notice: wire.Notice) -> bool:
        return self.session is None or self.session == notice.session


class Client:
    """A frontend's connection to CloudBunch.

    ``reply_queue`` is where the router sends this frontend's notices. A named queue is
    durable and kept on :meth:`close`, so notices wait for a restarted frontend; without a
    name, a random one is declared and deleted on close, and the broker deletes it by itself
    once it has had no consumer for ``reply_queue_expires`` seconds (a frontend that crashed
    leaves nothing behind; None keeps it forever). The random one has the broker's queue
    type (quorum by default): on a RabbitMQ cluster it has a member on every node, so it
    survives the loss of the client's node. Notices are deduplicated by id
    (the last ``dedup_size`` ids). Notices that arrive while no subscriber wants them are
    kept (the last ``dedup_size``) for the next subscriber.

    ``partitions``: the routers' ``--partitions`` (``CLOUDBUNCH_PARTITIONS`` for
    :meth:`connect`): a session's messages go to its partition's queue, owned by one router
    replica (docs/scaling.md); one the broker returns goes to the shared queue instead.
    0 (the default): the shared queue, as protocol 1.1 says.
    """

    def __init__(self, broker: Broker, namespace: str = "cb", reply_queue: str | None = None,
                 *, seqs: Mapping[str, int] | None = None, dedup_size: int = 10_000,
                 prefetch: int = 256,
                 reply_queue_expires: float | None = DEFAULT_REPLY_QUEUE_EXPIRES,
                 partitions: int = 0) -> None:
        if reply_queue_expires is not None and not reply_queue_expires > 0:
            raise ConfigError(f"reply_queue_expires must be above 0 seconds (or None), "
                              f"not {reply_queue_expires!r}")
        if not 0 <= partitions <= wire.MAX_PARTITIONS:
            raise ConfigError(f"partitions must be 0 to {wire.MAX_PARTITIONS} (the routers' "
                              f"--partitions), not {partitions!r}")
        self.partitions = partitions
        """The routers' ``--partitions``: a session's messages go to its partition's queue."""
        self.broker = broker
        self.namespace = namespace
        self._generated_queue = reply_queue is None
        self._expires = reply_queue_expires if reply_queue is None else None
        self.reply_queue = reply_queue or f"{namespace}.client.{secrets.token_hex(6)}"
        self._ingress = wire.queue_names(namespace)["ingress"]
        self._exchange = wire.exchange_names(namespace)["ingress"]
        self._seqs: dict[str, int] = dict(seqs or {})
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedup_size = dedup_size
        self._prefetch = prefetch
        self._subs: list[_Subscription] = []
        self._backlog: deque[wire.Notice] = deque(maxlen=dedup_size)
        self._owns_broker = False
        self._started = False

    @classmethod
    async def connect(cls, settings: Settings | None = None, reply_queue: str | None = None,
                      **kwargs: Any) -> Client:
        """Connect to RabbitMQ from ``settings`` (default: the environment) and start."""
        from .amqp import AmqpBroker

        settings = settings or Settings.from_env()
        broker = AmqpBroker(settings.amqp_url, settings.queue_type, name="cloudbunch-client")
        await broker.connect()
        kwargs.setdefault("partitions", settings.partitions)
        client = cls(broker, settings.namespace, reply_queue, **kwargs)
        client._owns_broker = True
        try:
            await client.start()
        except BaseException:
            await broker.close()
            raise
        return client

    async def start(self) -> None:
        """Declare the reply queue and consume it."""
        if self._started:
            return
        # A generated queue is new: it takes the broker's queue type (quorum by default), so
        # that on a cluster it survives the loss of its node and the client, reconnected to
        # another node, consumes it there. A named queue keeps the arguments it was made with.
        await self.broker.declare_own(self.reply_queue, durable=True, expires=self._expires,
                                      replicated=self._generated_queue)
        await self.broker.consume(self.reply_queue, self._on_delivery, prefetch=self._prefetch)
        self._started = True

    async def close(self) -> None:
        """Stop consuming (delete a generated reply queue) and end every notice iterator."""
        if self._started:
            await self.broker.cancel(self.reply_queue)
            if self._generated_queue:
                await self.broker.delete(self.reply_queue)
            self._started = False
        for sub in self._subs:
            sub.queue.put_nowait(_END)
        if self._owns_broker:
            await self.broker.close()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ sending

    def last_seq(self, session: str) -> int:
        """The last ``seq`` this client gave a message of ``session`` (0 if none)."""
        return self._seqs.get(session, 0)

    async def send(self, session: str, payload: Any, *, entry: str | None = None,
                   meta: dict[str, Any] | None = None, id: str | None = None,
                   seq: int | None = None, trace: Mapping[str, str] | None = None) -> str:
        """Send a person's message; return its id (the notices' ``in_reply_to``).

        ``trace`` (``traceparent`` and ``tracestate``, W3C trace context) travels in AMQP
        headers: the router copies it onto every dispatch and notice of the chain.

        To re-send a message whose publish failed (the router may or may not have it),
        pass its ``id`` and ``seq`` again: the router ignores a copy it has seen.
        """
        if seq is None:
            seq = self._seqs.get(session, 0) + 1
            self._seqs[session] = seq
        msg = wire.ClientMessage(session=session, id=id or _new_id(),
                                 reply_to=self.reply_queue, payload=payload, seq=seq,
                                 entry=entry, meta=meta,
                                 trace=dict(trace) if trace else None)
        try:
            await self._publish(msg)
        except NoRouter:
            # Certainly not delivered: give the number back unless another send took the next.
            if self._seqs.get(session) == seq:
                self._seqs[session] = seq - 1
            raise
        return msg.id

    async def end(self, session: str, *, id: str | None = None) -> str:
        """End the session: the router discards its stack and sends an ``end`` notice.

        ``id`` (default: a new one) is the message's dedup key, as for :meth:`send`.
        """
        msg = wire.ClientMessage(session=session, id=id or _new_id(), reply_to=self.reply_queue,
                                 type="end")
        await self._publish(msg)
        return msg.id

    async def _publish(self, msg: wire.ClientMessage) -> None:
        body = wire.encode(msg.to_wire())
        # The chain's root span when this process traces (its parent: ``trace`` if given,
        # else the current span); its context rides the message to the router.
        key = wire.INGRESS_KEY
        if self.partitions:
            key = wire.partition_key(key, wire.partition_of(msg.session, self.partitions))
        with tracing.start_span(
                f"send {self._exchange}", "producer", msg.trace,
                tracing.messaging("send", self._exchange, message_id=msg.id,
                                  routing_key=key, session=msg.session)) as span:
            headers = tracing.inject(msg.trace or {}, span)
            # No such partition (the routers run with fewer, or none): the shared queue.
            routed = await publish_or_fall_back(
                self.broker, Outgoing(key, body, msg.id, headers, exchange=self._exchange),
                wire.INGRESS_KEY)
        if isinstance(routed, Refused):
            raise MessageRefused(f"message {msg.id[:40]!r} of session {msg.session[:40]!r} "
                                 f"cannot be sent: {routed.reason}")
        if not routed:
            raise NoRouter(f"no router has declared {self._exchange} and {self._ingress} yet; "
                           "start `cloudbunch router` (with the same CLOUDBUNCH_NAMESPACE)")

    # ------------------------------------------------------------------ receiving

    async def _on_delivery(self, delivery: Delivery) -> None:
        # Deliveries run as concurrent tasks started in arrival order; nothing below awaits
        # before _deliver, so subscribers see a session's notices in the order published.
        try:
            notice = wire.Notice.from_wire(wire.decode(delivery.body))
            trace = wire.trace_context(delivery.headers)
            if trace is not None:
                notice = dataclasses.replace(notice, trace=trace)
        except wire.BadBody as exc:
            log.warning("event=bad_notice queue=%s message_id=%s reason=%s detail=%s",
                        self.reply_queue, delivery.message_id, exc.reason, exc.detail)
            await delivery.ack()
            return
        if notice.id in self._seen:
            self._seen.move_to_end(notice.id)
            log.debug("event=notice_duplicate session=%s id=%s", notice.session, notice.id)
        else:
            self._seen[notice.id] = None
            if len(self._seen) > self._dedup_size:
                self._seen.popitem(last=False)
            self._deliver(notice)
        await delivery.ack()

    def _deliver(self, notice: wire.Notice) -> None:
        taken = False
        for sub in self._subs:
            if sub.wants(notice):
                sub.queue.put_nowait(notice)
                taken = True
        if not taken:
            self._backlog.append(notice)

    def _subscribe(self, session: str | None) -> _Subscription:
        sub = _Subscription(session)
        for notice in self._take_backlog(sub.wants):
            sub.queue.put_nowait(notice)
        self._subs.append(sub)
        return sub

    def _take_backlog(self, wants: Callable[[wire.Notice], bool]) -> list[wire.Notice]:
        """Remove and return the backlog's notices that ``wants`` picks, oldest first."""
        taken: list[wire.Notice] = []
        kept: deque[wire.Notice] = deque(maxlen=self._backlog.maxlen)
        for notice in self._backlog:
            (taken if wants(notice) else kept).append(notice)
        self._backlog = kept
        return taken

    def _unsubscribe(self, sub: _Subscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    def notices(self) -> NoticeIterator:
        """Every notice, deduplicated, from now until the client closes (or ``aclose()``)."""
        return NoticeIterator(self, self._subscribe(None))

    def session_notices(self, session: str) -> NoticeIterator:
        """One session's notices, deduplicated, from now until the client closes."""
        return NoticeIterator(self, self._subscribe(session))

    async def conversation(self, session: str, payload: Any, *, timeout: float = 10.0,
                           settle: float = 0.3, entry: str | None = None,
                           meta: dict[str, Any] | None = None,
                           trace: Mapping[str, str] | None = None) -> list[wire.Notice]:
        """Send one message and collect the notices of the chain it starts.

        Collecting stops at the first notice of type ``end``, ``error`` or ``unhandled``
        (the chain is over); or, once at least one notice came, when none more comes for
        ``settle`` seconds (a chain that ends with ``reply`` has no closing notice); or after
        ``timeout`` seconds in all. It returns what was collected (maybe nothing).
        Notices of other chains of the session (an idle reminder that waited in the reply
        queue, say) are not returned but kept, in order, for :meth:`unclaimed` and the next
        subscriber; so are notices that arrive after it returned.
        """
        sub = self._subscribe(session)
        loop = asyncio.get_running_loop()
        collected: list[wire.Notice] = []
        others: list[wire.Notice] = []
        try:
            msg_id = await self.send(session, payload, entry=entry, meta=meta, trace=trace)
            deadline = loop.time() + timeout
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                wait = min(left, settle) if collected else left
                try:
                    item = await asyncio.wait_for(sub.queue.get(), wait)
                except TimeoutError:
                    break
                if item is _END:
                    break
                if item.in_reply_to != msg_id:
                    others.append(item)
                    continue
                collected.append(item)
                if item.type in ("end", "error", "unhandled"):
                    break
        finally:
            self._unsubscribe(sub)
            self._keep(others, sub)
        return collected

    def _keep(self, notices: list[wire.Notice], sub: _Subscription) -> None:
        """Back to the backlog: ``notices``, then what ``sub`` received and nobody read."""
        while not sub.queue.empty():
            item = sub.queue.get_nowait()
            if item is not _END:
                notices.append(item)
        for notice in notices:
            # A subscriber that wants it (every session's iterator) has had it already.
            if not any(other.wants(notice) for other in self._subs):
                self._backlog.append(notice)

    def unclaimed(self, session: str | None = None) -> list[wire.Notice]:
        """Take the notices that arrived while no subscriber wanted them (of ``session``, or
        all), oldest first: notices that waited in the reply queue for this frontend, or of
        another chain than a :meth:`conversation`'s."""
        return self._take_backlog(lambda n: session is None or n.session == session)


class NoticeIterator:
    """An async iterator over a subscription; it subscribes when created, not when started."""

    def __init__(self, client: Client, sub: _Subscription) -> None:
        self._client = client
        self._sub = sub
        self._done = False

    def __aiter__(self) -> NoticeIterator:
        return self

    async def __anext__(self) -> wire.Notice:
        if self._done:
            raise StopAsyncIteration
        item = await self._sub.queue.get()
        if item is _END:
            await self.aclose()
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]

    def received(self) -> list[wire.Notice]:
        """The notices that arrived and were not read yet, without waiting."""
        taken: list[wire.Notice] = []
        while not self._done and not self._sub.queue.empty():
            item = self._sub.queue.get_nowait()
            if item is _END:
                self._done = True
                self._client._unsubscribe(self._sub)
                break
            taken.append(item)
        return taken

    async def aclose(self) -> None:
        """Stop receiving (notices for no one else go to the client's backlog again)."""
        self._done = True
        self._client._unsubscribe(self._sub)


def _new_id() -> str:
    """An unguessable, unique client message id."""
    return secrets.token_urlsafe(16)
