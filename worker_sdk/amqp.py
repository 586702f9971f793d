"""The broker port on RabbitMQ, through aio-pika's robust connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import aio_pika
import aiormq
import aiormq.abc
from aio_pika.abc import AbstractRobustConnection
from aiormq import spec
from pamqp.header import ContentHeader

from . import amqp_frames, wire
from .amqp_connect import (
    CONNECT_TIMEOUT,
    FailoverConnection,
    connect_any,
    display,
    quiet_library_logs,
    split_urls,
)
from .broker import Handler, Outgoing, Published, Refused, refusal
from .errors import BrokerUnavailable, ConfigError, PublishFailed
from .urls import redact

__all__ = ["CONNECT_TIMEOUT", "AmqpBroker", "AmqpDelivery", "redact"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

# Errors that mean "the channel or connection is gone", as opposed to a bug in our code.
_CLOSED_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    ConnectionError,
    RuntimeError,
)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


class AmqpDelivery:
    """A consumed message; ack/reject are idempotent and survive a closed channel.

    Made straight from aiormq's delivered message (aio-pika's message object, and the task
    it runs each callback in, cost more per delivery than the rest of taking it)."""

    __slots__ = ("_message", "_settled")

    def __init__(self, message: aiormq.abc.DeliveredMessage) -> None:
        self._message = message
        self._settled = False

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def message_id(self) -> str | None:
        return self._message.header.properties.message_id

    @property
    def redelivered(self) -> bool:
        return bool(cast(spec.Basic.Deliver, self._message.delivery).redelivered)

    @property
    def reply_to(self) -> str | None:
        return self._message.header.properties.reply_to

    @property
    def _tag(self) -> int:
        return cast(int, cast(spec.Basic.Deliver, self._message.delivery).delivery_tag)

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self._message.header.properties.headers or {})

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            # Straight to the connection's writer (which sends it with the other frames of
            # this loop turn), encoded here: aiormq's basic_ack marshals it through pamqp.
            channel = cast(aiormq.Channel, self._message.channel)
            await _write(channel, amqp_frames.ack(channel.number, self._tag))
        except _CLOSED_ERRORS as exc:
            # The channel it came on is gone: the broker redelivers it, which is safe.
            log.debug("event=ack_lost message_id=%s reason=%s", self.message_id, _one_line(exc))

    async def reject(self, requeue: bool = True) -> None:
        if self._settled:
            return
        self._settled = True
        try:
            await self._message.channel.basic_reject(self._tag, requeue=requeue)
        except _CLOSED_ERRORS as exc:
            log.debug("event=reject_lost message_id=%s reason=%s", self.message_id,
                      _one_line(exc))


@dataclass
class _Consumer:
    channel: aio_pika.abc.AbstractRobustChannel
    restart: Callable[..., Any]
    """Consumes again on the channel aio-pika reopened after a reconnect."""
    tag: str = ""
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)


PUBLISH_CHANNELS = 4
"""Publishing channels per connection (see :meth:`AmqpBroker.publish`)."""


class AmqpBroker:
    """RabbitMQ through aio-pika: confirms, mandatory publishes, one channel per consumer.

    ``url`` may list several nodes of one cluster, comma-separated: the broker connects to
    one that answers and, when it is lost, reconnects to the next (see ``amqp_connect``).
    """

    def __init__(self, url: str, queue_type: str = "quorum", *, name: str = "cloudbunch",
                 give_up_after: float = 30.0, connect_timeout: float = CONNECT_TIMEOUT,
                 publish_timeout: float = 30.0) -> None:
        self.url = url
        self.urls = split_urls(url)
        self.queue_type = queue_type
        self.name = name
        self.give_up_after = give_up_after
        self.connect_timeout = connect_timeout
        self.publish_timeout = publish_timeout
        self._connection: FailoverConnection | None = None
        self._channels: list[aio_pika.abc.AbstractChannel] = []
        """Publishing channels (confirms on); each publish takes the least busy one."""
        self._busy: list[int] = []
        self._consumers: dict[str, _Consumer] = {}
        self._down_since: float | None = None
        self._state_callbacks: list[Callable[[bool], None]] = []
        quiet_library_logs()

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """Connect to a node that answers, trying for ``connect_timeout`` seconds.

        Raises BrokerUnavailable when no node answered in that time, and ConfigError at once
        for a refused login, a refused virtual host or a failed TLS handshake.
        """
        if self._connection is not None:
            return
        connection = await connect_any(self.urls, name=self.name, timeout=self.connect_timeout)
        try:
            self._channels = [await connection.channel(publisher_confirms=True,
                                                       on_return_raises=False)
                              for _ in range(PUBLISH_CHANNELS)]
            self._busy = [0] * PUBLISH_CHANNELS
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._connection = connection
        connection.close_callbacks.add(self._on_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        log.info("event=broker_connected url=%s name=%s", connection.current_url, self.name)

    @property
    def node_url(self) -> str | None:
        """The URL (password redacted) of the node in use, None when not connected."""
        return None if self._connection is None else self._connection.current_url

    def _on_lost(self, connection: Any, exc: BaseException | None = None) -> None:
        if self._connection is None or self._down_since is not None:
            return  # closed by us, or already reported
        self._down_since = time.monotonic()
        reason = _one_line(exc) if exc is not None else "closed"
        log.warning("event=broker_connection_lost url=%s reason=%s; reconnecting (to another "
                    "node when several are configured)", display(connection.url), reason)
        self._tell(False)

    def _on_reconnected(self, connection: Any) -> None:
        down_for = 0.0 if self._down_since is None else time.monotonic() - self._down_since
        self._down_since = None
        log.info("event=broker_reconnected url=%s down_for=%.1f", display(connection.url),
                 down_for)
        self._tell(True)

    def on_state(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(False)`` when the connection is lost, ``callback(True)`` when back."""
        self._state_callbacks.append(callback)

    def _tell(self, up: bool) -> None:
        for callback in self._state_callbacks:
            try:
                callback(up)
            except Exception:
                log.exception("event=state_callback_failed up=%s", up)

    async def close(self) -> None:
        """Stop consumers (handing back what they hold) and close the connection."""
        for queue in list(self._consumers):
            with contextlib.suppress(Exception):
                await self.cancel(queue, drain=0)
        connection, self._connection, self._channels = self._connection, None, []
        self._busy = []
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()
            if self._down_since is None:
                self._tell(False)

    def is_connected(self) -> bool:
        """Whether the connection is up now (False while reconnecting or after close)."""
        connection = self._connection
        return (connection is not None and connection.connected.is_set()
                and not connection.is_closed)

    async def wait_lost(self) -> None:
        """Return once the connection has been down for more than ``give_up_after`` seconds."""
        down_since: float | None = None
        while True:
            connection = self._connection
            if connection is None:
                return
            up = connection.connected.is_set() and not connection.is_closed
            now = time.monotonic()
            if up:
                down_since = None
            elif down_since is None:
                down_since = now
            elif now - down_since > self.give_up_after:
                log.error("event=broker_lost_for_good urls=%s down_for=%.1f",
                          ",".join(redact(u) for u in self.urls), now - down_since)
                return
            await asyncio.sleep(min(0.5, self.give_up_after / 4))

    def _conn(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise BrokerUnavailable("the broker is not connected; call connect() first")
        return self._connection

    @contextlib.asynccontextmanager
    async def _temp_channel(self) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
        """A throwaway channel: a failed declare closes it, not the publishing channel."""
        channel = await self._conn().channel(publisher_confirms=False)
        try:
            yield channel
        finally:
            if not channel.is_closed:
                with contextlib.suppress(Exception):
                    await channel.close()

    # ------------------------------------------------------------------ queues

    async def declare(self, queue: str) -> None:
        await self._declare(queue, durable=True, arguments={"x-queue-type": self.queue_type})

    async def declare_own(self, queue: str, *, durable: bool = True,
                          expires: float | None = None,
                          single_active: bool = False, replicated: bool = False) -> None:
        arguments: dict[str, Any] = {}
        if replicated:
            arguments["x-queue-type"] = self.queue_type
        if expires is not None:
            arguments["x-expires"] = max(1, round(expires * 1000))
        if single_active:
            arguments["x-single-active-consumer"] = True
        await self._declare(queue, durable=durable, arguments=arguments or None)

    async def _declare(self, queue: str, *, durable: bool,
                       arguments: dict[str, Any] | None) -> None:
        async def attempt() -> None:
            async with self._temp_channel() as channel:
                await channel.declare_queue(queue, durable=durable, exclusive=False,
                                            auto_delete=False, arguments=arguments)
        try:
            await self._set_up(f"declare {queue!r}", attempt)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigError(
                f"queue {queue!r} already exists with other settings ({_one_line(exc)}); "
                "every party must use the same CLOUDBUNCH_QUEUE_TYPE") from None

    async def delete(self, queue: str) -> None:
        async with self._temp_channel() as channel:
            await channel.queue_delete(queue, if_unused=False, if_empty=False)

    async def delete_exchange(self, exchange: str) -> None:
        """Delete an exchange (tests and tools); no error when it does not exist."""
        async with self._temp_channel() as channel:
            await channel.exchange_delete(exchange)

    async def bind(self, exchange: str, routing_key: str, queue: str) -> None:
        try:
            async with self._temp_channel() as channel:
                declared = await channel.declare_exchange(
                    exchange, aio_pika.ExchangeType.DIRECT, durable=True)
                await channel.declare_queue(queue, passive=True)
                target = await channel.get_queue(queue, ensure=False)
                await target.bind(declared, routing_key)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigError(f"exchange {exchange!r} already exists with other settings "
                              f"({_one_line(exc)}); it must be a durable direct exchange") \
                from None

    async def _passive(self, queue: str) -> spec.Queue.DeclareOk | None:
        try:
            async with self._temp_channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
                return declared.declaration_result
        except aiormq.exceptions.ChannelNotFoundEntity:
            return None

    async def queue_stats(self, queue: str) -> tuple[int, int] | None:
        """Ready messages and consumers of ``queue`` (passive declare); None if it is absent."""
        result = await self._passive(queue)
        if result is None:
            return None
        return int(result.message_count or 0), int(result.consumer_count or 0)

    async def queue_exists(self, queue: str) -> bool:
        """Whether ``queue`` exists (passive declare)."""
        return await self._passive(queue) is not None

    async def exchange_exists(self, exchange: str) -> bool:
        """Whether ``exchange`` exists (passive declare)."""
        try:
            async with self._temp_channel() as channel:
                await channel.declare_exchange(exchange, passive=True)
                return True
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False

    async def consumer_count(self, queue: str) -> int:
        """How many consumers ``queue`` has; 0 when it does not exist."""
        result = await self._passive(queue)
        return 0 if result is None else int(result.consumer_count or 0)

    async def message_count(self, queue: str) -> int:
        """How many ready messages ``queue`` has; 0 when it does not exist."""
        result = await self._passive(queue)
        return 0 if result is None else int(result.message_count or 0)

    async def peek(self, queue: str, limit: int) -> list[tuple[dict[str, Any], bytes]]:
        """Up to ``limit`` messages from the head of ``queue`` (headers, body), left in place:
        they are taken unacknowledged and handed back when the channel closes."""
        found: list[tuple[dict[str, Any], bytes]] = []
        try:
            async with self._temp_channel() as channel:
                declared = await channel.declare_queue(queue, passive=True)
                for _ in range(limit):
                    message = await declared.get(no_ack=False, fail=False, timeout=5)
                    if message is None:
                        break
                    found.append((dict(message.headers or {}), message.body))
                # Closing the channel requeues every message taken, in their order.
        except aiormq.exceptions.ChannelNotFoundEntity:
            return []
        return found

    # ------------------------------------------------------------------ publish

    async def publish(self, messages: Sequence[Outgoing]) -> list[Published]:
        """Publish all with confirms in flight together.

        Per message: True, False for a returned (unroutable) one or one to a missing
        exchange, :class:`Refused` for one the broker cannot take for what it carries (not
        sent). Raises PublishFailed when the broker or the connection fails.
        """
        if not messages:
            return []
        if not self._channels:
            raise PublishFailed("the broker is not connected")
        # One channel for the whole call, so its messages reach their queues in list order.
        # Concurrent calls go to other channels: aiormq lets one publish at a time through a
        # channel, one event-loop turn each, so several channels let the publishes of
        # concurrent steps share a turn and the transport's single write.
        index = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[index] += 1
        results: list[Published] = []
        try:
            async with asyncio.timeout(self.publish_timeout):
                # aiormq finds the returned message's confirm by message_id, so two messages
                # with one id must not be in flight together: split into contiguous waves.
                for wave in _waves(messages):
                    results.extend(await self._publish_wave(self._channels[index], wave))
        except TimeoutError:
            raise PublishFailed(
                f"no confirm from the broker within {self.publish_timeout}s") from None
        finally:
            if index < len(self._busy):
                self._busy[index] -= 1
        return results

    async def _publish_wave(self, publishing: aio_pika.abc.AbstractChannel,
                            messages: Sequence[Outgoing]) -> list[Published]:
        try:
            channel = cast(aiormq.Channel, await publishing.get_underlay_channel())
        except _CLOSED_ERRORS as exc:
            raise PublishFailed(f"channel unavailable: {_one_line(exc)}") from None
        # What the body carried decides these, so they are never sent: a broker that gets
        # them closes the channel or the whole connection, and a retry would do it again.
        max_content = int(getattr(channel, "max_content_size", 131_064))
        verdicts: list[Refused | None] = []
        frames: list[tuple[Outgoing, bytes | spec.Basic.Properties]] = []
        for m in messages:
            verdict = refusal(m)
            encoded: bytes | spec.Basic.Properties | None = None
            if verdict is None:
                fast = amqp_frames.publish(
                    channel.number, m.exchange, m.queue, m.body, message_id=m.message_id,
                    content_type=wire.CONTENT_TYPE, headers=m.headers,
                    max_content=max_content, reply_to=m.reply_to)
                if fast is None:  # a shape left to pamqp
                    encoded = spec.Basic.Properties(
                        content_type=wire.CONTENT_TYPE, delivery_mode=2,
                        message_id=m.message_id, headers=dict(m.headers) or None,
                        reply_to=m.reply_to or None)
                    verdict = _frame_refusal(encoded, len(m.body), max_content)
                else:
                    encoded, header_size = fast
                    verdict = _header_refusal(header_size, max_content)
            if verdict is not None:
                log.warning("event=publish_refused queue=%s exchange=%s reason=%s",
                            m.queue[:80], m.exchange, verdict.reason)
            else:
                assert encoded is not None
                frames.append((m, encoded))
            verdicts.append(verdict)
        try:
            outcomes = await _send_confirmed(channel, frames)
        except _CLOSED_ERRORS as exc:
            raise PublishFailed(f"channel unavailable: {_one_line(exc)}") from None
        if any(isinstance(o, aiormq.exceptions.DeliveryError) for o in outcomes):
            await self._renew_channel(publishing)
        sent = iter(zip(frames, outcomes, strict=True))
        results: list[Published] = []
        for verdict in verdicts:
            if verdict is not None:
                results.append(verdict)
                continue
            (message, _), outcome = next(sent)
            results.append(_published(message, outcome))
        return results

    async def _renew_channel(self, nacked: aio_pika.abc.AbstractChannel) -> None:
        """After a nack, publish on a new channel. A RabbitMQ channel keeps, per quorum queue,
        the state of its enqueuer; a channel that published while the queue's leader was lost
        (its node killed) was seen refusing every later message to that queue for over 60 s,
        while a new channel's were taken at once. The old channel is closed (a publish still
        in flight on it fails and is retried by its caller)."""
        if nacked not in self._channels or self._connection is None:
            return  # another wave renewed it already, or the broker is closing
        try:
            fresh = await self._connection.channel(publisher_confirms=True,
                                                   on_return_raises=False)
        except Exception as exc:  # keep the old one: the connection itself is failing
            log.warning("event=publish_channel_renew_failed error=%s", _one_line(exc))
            return
        if nacked not in self._channels:  # renewed meanwhile
            with contextlib.suppress(Exception):
                await fresh.close()
            return
        self._channels[self._channels.index(nacked)] = fresh
        log.info("event=publish_nacked; publishing on a new channel from now on")
        with contextlib.suppress(Exception):
            await nacked.close()

    # ------------------------------------------------------------------ consume

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> None:
        """Consume on a channel of its own (its own prefetch), restored after reconnects.

        A connection lost while the consumer is being set up (a broker restart as a worker
        starts) is waited out, up to ``give_up_after`` seconds, and the setup made again.
        """
        if queue in self._consumers:
            raise ConfigError(f"already consuming {queue!r} on this connection")
        self._consumers[queue] = await self._set_up(
            f"consume {queue!r}", lambda: self._start_consumer(queue, handler, prefetch))

    async def _set_up(self, what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """Run a setup step (a declare, a bind, starting a consumer) again when the connection
        is lost under it, until it is back, for up to ``give_up_after`` seconds."""
        deadline = time.monotonic() + self.give_up_after
        while True:
            try:
                return await attempt()
            except (ConfigError, BrokerUnavailable, aiormq.exceptions.ChannelClosed):
                raise  # the broker's answer to this request, not a lost connection
            except _CLOSED_ERRORS as exc:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"cannot {what}: the connection keeps failing "
                                            f"({_one_line(exc)})") from None
                log.warning("event=setup_interrupted what=%s reason=%s; trying again once the "
                            "connection is back", what, _one_line(exc))
                await asyncio.sleep(0.2)

    async def _start_consumer(self, queue: str, handler: Handler, prefetch: int) -> _Consumer:
        channel = await self._conn().channel(publisher_confirms=False)

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            # aiormq runs each delivery in a task of its own: this one.
            task = asyncio.current_task()
            if task is not None:
                consumer.inflight.add(task)
            delivery = AmqpDelivery(message)
            try:
                await handler(delivery)
            except Exception:
                log.exception("event=handler_failed queue=%s message_id=%s", queue,
                              delivery.message_id)
                await delivery.reject(requeue=True)
            finally:
                if task is not None:
                    consumer.inflight.discard(task)

        async def start(*_: Any) -> None:
            underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            ok = await underlay.basic_consume(queue, on_message, no_ack=False)
            consumer.tag = str(ok.consumer_tag)

        async def restart(*_: Any) -> None:
            try:
                await start()
            except Exception as exc:  # the robust channel reopens again after a new loss
                log.warning("event=consume_restore_failed queue=%s reason=%s", queue,
                            _one_line(exc))

        consumer = _Consumer(channel=channel, restart=restart)
        try:
            await channel.set_qos(prefetch_count=prefetch)
            await channel.declare_queue(queue, passive=True)
            await start()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await channel.close()
            if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
                raise ConfigError(f"cannot consume {queue!r}: no such queue (declare it "
                                  "first)") from None
            raise
        # The robust channel restores its prefetch and reopens itself after a reconnect;
        # the consumer, made on the aiormq channel below it, is restarted here.
        channel.reopen_callbacks.add(restart)
        return consumer

    async def cancel(self, queue: str, *, drain: float = 8.0) -> None:
        """Stop consuming; wait up to ``drain`` s for running handlers, then hand back the rest."""
        consumer = self._consumers.pop(queue, None)
        if consumer is None:
            return
        consumer.channel.reopen_callbacks.discard(consumer.restart)
        with contextlib.suppress(*_CLOSED_ERRORS):
            underlay = cast(aiormq.Channel, await consumer.channel.get_underlay_channel())
            await underlay.basic_cancel(consumer.tag)
        if consumer.inflight and drain > 0:
            await asyncio.wait(set(consumer.inflight), timeout=drain)
        # Closing the channel returns its unacknowledged deliveries to the queue.
        with contextlib.suppress(Exception):
            await consumer.channel.close()


async def _send_confirmed(
        channel: aiormq.Channel,
        frames: Sequence[tuple[Outgoing, bytes | spec.Basic.Properties]]) -> list[object]:
    """Publish ``frames`` on ``channel`` in list order, in one write, and wait for all their
    confirms. Per message: the broker's ack, the returned message (no queue took it), or the
    exception it failed with (one that cannot be encoded is not sent).

    This is aiormq's ``basic_publish`` bookkeeping (delivery tag, confirmation future, the
    message id a return is matched by) done once for the whole list, instead of per message
    with its own task, timeout, lock round and write-queue put: the publish path costs the
    router most per turn. It runs without a suspension between the first delivery tag and
    the write, so when nobody holds the channel lock and the write queue has room it does
    not take the lock (an asyncio context manager per publish); otherwise it waits for it.
    """
    if channel.write_queue.full() or _channel_lock(channel).locked():
        async with channel.lock:
            outcomes, waiting = await _stage_and_write(channel, frames)
    else:
        outcomes, waiting = await _stage_and_write(channel, frames)
    # One await per confirm rather than a gather (a future and a callback per confirm): a
    # confirm that failed, or was cancelled or rejected by its closing channel, is that
    # message's outcome; only this task's own cancellation is raised.
    task = asyncio.current_task()
    for index, confirmation in waiting:
        try:
            outcomes[index] = await confirmation
        except asyncio.CancelledError as exc:
            if task is not None and task.cancelling():
                raise
            outcomes[index] = exc
        except Exception as exc:
            outcomes[index] = exc
    return outcomes


async def _stage_and_write(
        channel: aiormq.Channel,
        frames: Sequence[tuple[Outgoing, bytes | spec.Basic.Properties]],
        ) -> tuple[list[object], list[tuple[int, asyncio.Future[Any]]]]:
    """:func:`_stage` the messages and hand their frames to the writer; what it returns but
    the frames. Suspends only when the write queue is full."""
    outcomes, waiting, payload = _stage(channel, frames)
    if waiting:
        try:
            await _write(channel, payload)
        except BaseException:
            # Not sent (the channel closed, or cancelled while the write queue was full):
            # give the delivery tags back, or every later confirm would be matched to the
            # wrong publish.
            channel.delivery_tag -= len(waiting)
            for _, confirmation in waiting:
                confirmation.cancel()
            for tag in range(channel.delivery_tag + 1,
                             channel.delivery_tag + len(waiting) + 1):
                channel.confirmations.pop(tag, None)
            raise
    return outcomes, waiting


def _stage(channel: aiormq.Channel,
           frames: Sequence[tuple[Outgoing, bytes | spec.Basic.Properties]],
           ) -> tuple[list[object], list[tuple[int, asyncio.Future[Any]]], bytes]:
    """Give each message a delivery tag and a confirmation future: the outcomes so far (an
    encoding error), the confirms to wait for by index, and the frames to write."""
    outcomes: list[object] = [None] * len(frames)
    waiting: list[tuple[int, asyncio.Future[Any]]] = []
    payloads: list[bytes] = []
    pending = _pending(channel)
    loop = channel.loop
    for index, (message, encoded) in enumerate(frames):
        if isinstance(encoded, bytes):
            payload = encoded  # worker_sdk.amqp_frames made them
        else:
            try:
                payload = aiormq.abc.ChannelFrame.marshall(channel.number, [
                    spec.Basic.Publish(exchange=message.exchange,
                                       routing_key=message.queue, mandatory=True),
                    ContentHeader(properties=encoded, body_size=len(message.body)),
                    *channel._split_body(message.body)]).payload
            except (ValueError, TypeError, struct.error) as exc:
                outcomes[index] = exc
                continue
        channel.delivery_tag += 1
        tag = channel.delivery_tag
        confirmation: asyncio.Future[Any] = loop.create_future()
        pending.add(confirmation)
        channel.confirmations[tag] = confirmation
        channel.message_id_delivery_tag[message.message_id] = tag
        confirmation.add_done_callback(partial(
            _settled, pending, channel.message_id_delivery_tag, message.message_id, tag))
        payloads.append(payload)
        waiting.append((index, confirmation))
    return outcomes, waiting, b"".join(payloads)


def _channel_lock(channel: aiormq.Channel) -> asyncio.Lock:
    """The lock behind aiormq's ``Channel.lock`` context manager."""
    return cast(asyncio.Lock, channel._Channel__lock)  # type: ignore[attr-defined]


_PENDING: weakref.WeakKeyDictionary[
    aiormq.Channel, tuple[set[asyncio.Future[Any]], asyncio.Future[Any]]] = \
    weakref.WeakKeyDictionary()
"""Per channel: the confirmation futures it owes, and the guard whose rejection fails them."""


def _pending(channel: aiormq.Channel) -> set[asyncio.Future[Any]]:
    """The channel's unsettled confirmations. aiormq registers each future it makes in the
    channel's and the connection's future stores (two closures and callbacks per publish)
    so that a closing channel rejects them; here one guard future per channel is registered
    instead, and its rejection is passed on to every confirmation still pending. Once the
    guard is rejected the channel takes no more publishes (ChannelInvalidStateError)."""
    entry = _PENDING.get(channel)
    if entry is None:
        guard = channel.create_future()
        entry = _PENDING[channel] = (set(), guard)
        guard.add_done_callback(partial(_reject_pending, entry[0]))
    pending, guard = entry
    if guard.done():
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    return pending


def _reject_pending(pending: set[asyncio.Future[Any]], guard: asyncio.Future[Any]) -> None:
    error = asyncio.CancelledError() if guard.cancelled() else guard.exception()
    for confirmation in list(pending):
        if not confirmation.done():
            confirmation.set_exception(error or aiormq.exceptions.ChannelInvalidStateError(
                "channel closed"))
    pending.clear()


def _settled(pending: set[asyncio.Future[Any]], ids: dict[str, int], message_id: str,
             tag: int, confirmation: asyncio.Future[Any]) -> None:
    """A confirmation is settled: forget it, and the message id a return is matched by."""
    pending.discard(confirmation)
    if ids.get(message_id) == tag:
        del ids[message_id]
    if not confirmation.cancelled():
        confirmation.exception()  # retrieved: a publish nobody awaits any more logs nothing


async def _write(channel: aiormq.Channel, payload: bytes) -> None:
    """Hand encoded frames to the connection's writer, in order with the channel's others;
    ChannelInvalidStateError if the channel is closed (as aiormq's own methods raise)."""
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    frame = aiormq.abc.ChannelFrame(payload=payload, should_close=False)
    try:
        channel.write_queue.put_nowait(frame)
    except asyncio.QueueFull:
        await channel.write_queue.put(frame)


def _published(message: Outgoing, outcome: object) -> Published:
    """One publish's outcome: routed, returned, refused, or raise PublishFailed."""
    if isinstance(outcome, aiormq.abc.DeliveredMessage):
        # With on_return_raises=False aiormq resolves a returned message's confirm with the
        # basic.return content: no queue took it.
        log.debug("event=publish_returned queue=%s message_id=%s", message.queue,
                  message.message_id)
        return False
    if isinstance(outcome, spec.Basic.Ack):
        return True
    if isinstance(outcome, aiormq.exceptions.ChannelNotFoundEntity) and message.exchange:
        # No such exchange (no router has declared it yet): unroutable, like a return, and
        # like it reported by the caller, which knows what it means (the Client: no router).
        log.debug("event=publish_no_exchange exchange=%s reason=%s", message.exchange,
                    _one_line(outcome))
        return False
    if isinstance(outcome, (ValueError, TypeError, struct.error)):
        # The client library could not encode it (a check above missed a case): nothing
        # was sent, so it is the message's fault.
        return Refused(f"cannot be encoded: {_one_line(outcome)}")
    if isinstance(outcome, aiormq.exceptions.DeliveryError):
        raise PublishFailed(f"the broker refused a message to {message.queue!r} (nack)")
    if isinstance(outcome, BaseException):
        raise PublishFailed(f"publish to {message.queue!r} failed: {_one_line(outcome)}")
    raise PublishFailed(f"unexpected publish outcome {outcome!r}")  # pragma: no cover


def _frame_refusal(properties: spec.Basic.Properties, body_size: int,
                   max_content: int) -> Refused | None:
    """A content header must fit in one frame: a bigger one makes RabbitMQ close the whole
    connection (FRAME_ERROR)."""
    if _surely_small(properties, max_content):
        return None  # the common case, without marshalling the header twice
    try:
        size = len(ContentHeader(body_size=body_size, properties=properties).marshal())
    except (ValueError, TypeError, struct.error) as exc:
        return Refused(f"its properties cannot be encoded: {_one_line(exc)}")
    return _header_refusal(size, max_content)


def _header_refusal(size: int, max_content: int) -> Refused | None:
    """A content header of ``size`` bytes must fit in one frame's ``max_content``."""
    if size > max_content:
        return Refused(f"its headers take {size} bytes; one frame holds {max_content}")
    return None


def _surely_small(properties: spec.Basic.Properties, max_content: int) -> bool:
    """Whether the content header certainly fits in a frame: flat string headers and ids
    whose encoded size (at most 4 bytes of framing per character, plus 16 per field) is a
    fraction of the frame. Anything else (nested tables, other types) is marshalled."""
    budget = max_content // 2 - 256 - 4 * len(properties.message_id or "")
    for key, value in (properties.headers or {}).items():
        if not isinstance(value, str):
            return False
        budget -= 4 * (len(key) + len(value)) + 16
        if budget < 0:
            return False
    return True


def _waves(messages: Sequence[Outgoing]) -> list[list[Outgoing]]:
    """Split into contiguous runs in which no message_id repeats."""
    if len(messages) == 1:
        return [list(messages)]
    waves: list[list[Outgoing]] = [[]]
    seen: set[str] = set()
    for message in messages:
        if message.message_id in seen:
            waves.append([])
            seen = set()
        waves[-1].append(message)
        seen.add(message.message_id)
    return waves
