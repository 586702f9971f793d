"""The broker port: what router, services and clients need from a message broker.

Its errors are :class:`worker_sdk.errors.BrokerUnavailable` and
:class:`worker_sdk.errors.PublishFailed`.

Two adapters implement it: :mod:`worker_sdk.amqp` (RabbitMQ through aio-pika) and
:mod:`worker_sdk.memory` (in process, for the embedded engine and the test kit).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish on the default exchange, routed by queue name."""

    queue: str
    body: bytes
    message_id: str
    headers: dict[str, str] = field(default_factory=dict)


class Delivery(Protocol):
    """One consumed message. Acknowledge it only after its effects are durable."""

    @property
    def body(self) -> bytes: ...

    @property
    def message_id(self) -> str | None: ...

    @property
    def redelivered(self) -> bool: ...

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

    async def declare(self, queue: str) -> None:
        """Declare a shared durable queue (arguments exactly {x-queue-type: TYPE})."""

    async def declare_own(self, queue: str, *, durable: bool = True,
                          expires: float | None = None,
                          single_active: bool = False) -> None:
        """Declare a party's own queue (a frontend's reply queue): no queue-type argument.

        With ``expires`` (seconds), the broker deletes the queue once it has had no consumer
        for that long (``x-expires``), so a party that crashed leaves nothing behind.
        ``single_active``: of the queue's consumers only one gets messages at a time (in
        order); another takes over when it goes (``x-single-active-consumer``).
        """

    async def delete(self, queue: str) -> None:
        """Delete a queue (tests and tools)."""

    async def queue_exists(self, queue: str) -> bool:
        """Whether ``queue`` exists (declared by anyone)."""

    async def consumer_count(self, queue: str) -> int:
        """How many consumers ``queue`` has (0 when it does not exist)."""

    async def message_count(self, queue: str) -> int:
        """How many messages wait in ``queue``, not delivered (0 when it does not exist)."""

    async def publish(self, messages: Sequence[Outgoing]) -> list[bool]:
        """Publish persistently with ``mandatory``; return, per message, whether a queue took it.

        Messages to one queue arrive in the order given. Returns once every message is
        confirmed by the broker; raises PublishFailed when one is not (nack, lost connection).
        """

    async def consume(self, queue: str, handler: Handler, *, prefetch: int) -> None:
        """Start consuming ``queue`` (manual acks); the consumer survives reconnects."""

    async def cancel(self, queue: str, *, drain: float = 8.0) -> None:
        """Stop consuming ``queue``: wait up to ``drain`` s for running handlers, then hand
        deliveries not yet acknowledged back to the broker."""
