"""The broker port: what router, services and clients need from a message broker.

Its errors are :class:`worker_sdk.errors.BrokerUnavailable` and
:class:`worker_sdk.errors.PublishFailed`.

Two adapters implement it: :mod:`worker_sdk.amqp` (RabbitMQ through aio-pika) and
:mod:`worker_sdk.memory` (in process, for the embedded engine and the test kit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

MAX_SHORTSTR: Final = 255
"""Bytes an AMQP short string (a routing key, a message id, a header name) can hold."""
DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"
"""RabbitMQ's direct reply-to pseudo-queue: a publish to ``amq.rabbitmq.reply-to.A.B`` whose
``A`` is not a channel it issued makes RabbitMQ (3.10) close the publisher's whole connection
with INTERNAL_ERROR, and no client of CloudBunch consumes it, so such a name is never sent."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: on the default exchange, ``queue`` is the queue name; on a
    named ``exchange`` it is the routing key."""

    queue: str
    body: bytes
    message_id: str
    headers: dict[str, str] = field(default_factory=dict)
    exchange: str = ""
    reply_to: str | None = None
    """The AMQP ``reply_to`` property: on a dispatch of a partitioned namespace, the routing
    key its reply takes (``replies.3``); None: left out."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A publish the broker cannot take because of what the message carries (a routing key
    over 255 bytes, a header the frame cannot hold...). Not sent; retrying cannot help.

    False in a boolean test, like a returned message: no queue took it.
    """

    reason: str

    def __bool__(self) -> bool:
        return False


Published = bool | Refused
"""Per message: True (a queue took it), False (returned: no queue), or :class:`Refused`."""


def refusal(message: Outgoing) -> Refused | None:
    """Why the broker would refuse ``message`` for what it carries, or None.

    The checks every adapter shares; :mod:`worker_sdk.amqp` adds the frame size.
    """
    key = message.queue.encode("utf-8", "surrogatepass")
    if len(key) > MAX_SHORTSTR:
        return Refused(f"routing key is {len(key)} bytes; AMQP allows at most {MAX_SHORTSTR}")
    if not message.exchange and message.queue.startswith(DIRECT_REPLY_TO):
        return Refused(f"{DIRECT_REPLY_TO!r} names RabbitMQ's direct reply-to, not a queue")
    if len(message.message_id.encode("utf-8", "surrogatepass")) > MAX_SHORTSTR:
        return Refused(f"message id is over {MAX_SHORTSTR} bytes")
    if len(message.exchange.encode("utf-8", "surrogatepass")) > MAX_SHORTSTR:
        return Refused(f"exchange name is over {MAX_SHORTSTR} bytes")
    for name in message.headers:
        if len(name.encode("utf-8", "surrogatepass")) > MAX_SHORTSTR:
            return Refused(f"header name {name[:40]!r}... is over {MAX_SHORTSTR} bytes")
    return None


async def publish_or_fall_back(broker: Broker, message: Outgoing, fallback: str) -> Published:
    """Publish ``message`` to its exchange; should the broker return it (no queue bound to
    its routing key: a partition the routers do not have), publish it again with routing
    key ``fallback``, which the shared queue takes."""
    (routed,) = await broker.publish([message])
    if not routed and not isinstance(routed, Refused) and message.queue != fallback:
        (routed,) = await broker.publish([dataclasses.replace(message, queue=fallback)])
    return routed


class Delivery(Protocol):
    """One consumed message. Acknowledge it only after its effects are durable."""

    @property
    def body(self) -> bytes: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def redelivered(self) -> bool: ...

    @property
    def reply_to(self) -> str | None:
        """The AMQP ``reply_to`` property (None when absent)."""

    @property
    def headers(self) -> Mapping[str, Any]:
        """The AMQP headers (trace context travels there)."""

    async def ack(self) -> None:
        """Acknowledge; a no-op when the channel it came on is gone (it will be redelivered)."""

    async def reject(self, requeue: bool = True) -> None:
        """Hand the message back to the broker (requeue) or drop it."""


Handler = Callable[[Delivery], Awaitable[None]]


class Broker(Protocol):
    """A connection to the broker, with publisher confirms and mandatory routing."""

    async def connect(self) -> None:
        """Connect (retrying with bounded backoff); raise BrokerUnavailable when it cannot."""

    async def close(self) -> None:
        """Stop consumers and close the connection."""

    async def wait_lost(self) -> None:
        """Return when the connection is lost for good (reconnecting gave up); the caller
        should then exit so that a supervisor restarts it. Never returns while it holds."""

    def is_connected(self) -> bool:
        """Whether the connection is up now (False while reconnecting or after close)."""

    def on_state(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(False)`` as soon as the connection is lost and ``callback(True)``
        once it is back, however short the outage (a poll of ``is_connected`` can miss one)."""

    async def declare(self, queue: str) -> None:
        """Declare a shared durable queue (arguments exactly {x-queue-type: TYPE})."""

    async def declare_own(self, queue: str, *, durable: bool = True,
                          expires: float | None = None,
                          single_active: bool = False, replicated: bool = False) -> None:
        """Declare a party's own queue (a frontend's reply queue): no queue-type argument,
        unless ``replicated``: then the broker's queue type (``x-queue-type``, quorum by
        default), so that on a cluster the queue has a member on every node and survives the
        loss of any one (a classic queue lives on one node). Only for a new queue: a queue
        that exists with other arguments cannot be re-declared.

        With ``expires`` (seconds), the broker deletes the queue once it has had no consumer
        for that long (``x-expires``), so a party that crashed leaves nothing behind.
        ``single_active``: of the queue's consumers only one gets messages at a time (in
        order); another takes over when it goes (``x-single-active-consumer``).
        """

    async def delete(self, queue: str) -> None:
        """Delete a queue (tests and tools)."""

    async def bind(self, exchange: str, routing_key: str, queue: str) -> None:
        """Declare the durable direct ``exchange`` (if needed) and bind ``queue`` to it
        under ``routing_key``."""

    async def queue_exists(self, queue: str) -> bool:
        """Whether ``queue`` exists (declared by anyone)."""

    async def consumer_count(self, queue: str) -> int:
        """How many consumers ``queue`` has (0 when it does not exist)."""

    async def message_count(self, queue: str) -> int:
        """How many messages wait in ``queue``, not delivered (0 when it does not exist)."""

    async def publish(self, messages: Sequence[Outgoing]) -> list[Published]:
        """Publish persistently with ``mandatory``; return, per message, whether a queue took it.

        Messages to one queue arrive in the order given. Returns once every message is
        confirmed by the broker. Two kinds of failure, never confused: a message the broker
        cannot take because of what it carries is not sent and comes back as :class:`Refused`
        (the message's fault: retrying cannot help); a failure of the broker or the
        connection (nack, lost connection, no confirm in time) raises PublishFailed (the
        world's fault: retry later). A publish to a named exchange that does not exist
        comes back False, as if returned.
        """

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> None:
        """Start consuming ``queue`` (manual acks); the consumer survives reconnects."""

    async def cancel(self, queue: str, *, drain: float = 8.0) -> None:
        """Stop consuming ``queue``: wait up to ``drain`` s for running handlers, then hand
        deliveries not yet acknowledged back to the broker."""
