"""The broker contract, run here on MemoryBroker (and on RabbitMQ by the integration suite)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness.waiting import eventually
from worker_sdk.broker import Delivery, Outgoing, Refused
from worker_sdk.errors import ConfigError, PublishFailed
from worker_sdk.memory import MemoryBroker


def out(queue: str, i: int | str) -> Outgoing:
    return Outgoing(queue, str(i).encode(), f"m{i}", {"x-test": "yes"})


class BrokerContract:
    """What every broker adapter must do; subclasses provide the ``broker`` fixture, and
    ``second``: another connection to the same broker."""

    async def test_a_single_active_consumer_queue_feeds_one_consumer_at_a_time(
            self, broker: Any, second: Any, namespace: str) -> None:
        """What partitions stand on (router.partitions): one consumer gets everything; when
        it cancels, the next takes over at once; one that consumes again queues up last."""
        queue = f"{namespace}.sac"
        await broker.declare_own(queue, single_active=True, replicated=True)
        got: dict[str, list[bytes]] = {"first": [], "second": []}

        def handler(name: str) -> Any:
            async def handle(delivery: Delivery) -> None:
                got[name].append(delivery.body)
                await delivery.ack()
            return handle

        await broker.consume(queue, handler("first"), prefetch=8)
        await second.consume(queue, handler("second"), prefetch=8)
        await broker.publish([out(queue, i) for i in range(5)])
        await eventually(lambda: _true(len(got["first"]) == 5))
        await asyncio.sleep(0.1)
        assert got["second"] == []
        await broker.cancel(queue)
        await broker.consume(queue, handler("first"), prefetch=8)  # now behind the second
        await broker.publish([out(queue, i) for i in range(5, 8)])
        await eventually(lambda: _true(len(got["second"]) == 3))
        assert got["second"] == [b"5", b"6", b"7"]
        assert len(got["first"]) == 5
        await second.cancel(queue)  # the first is next in line again
        await broker.publish([out(queue, 8)])
        await eventually(lambda: _true(len(got["first"]) == 6))
        await broker.cancel(queue)

    async def test_reply_to_travels_with_the_message(self, broker: Any, namespace: str) -> None:
        queue = f"{namespace}.q"
        await broker.declare(queue)
        seen: list[str | None] = []

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.reply_to)
            await delivery.ack()

        await broker.consume(queue, handler, prefetch=4)
        await broker.publish([Outgoing(queue, b"a", "m1", reply_to="replies.3"),
                              Outgoing(queue, b"b", "m2")])
        await eventually(lambda: _true(len(seen) == 2))
        assert seen == ["replies.3", None]
        await broker.cancel(queue)

    async def test_publish_reports_missing_queues(self, broker: Any, namespace: str) -> None:
        queue = f"{namespace}.q"
        await broker.declare(queue)
        assert await broker.publish([out(queue, 1), out(f"{namespace}.missing", 2),
                                     out(queue, 3)]) == [True, False, True]
        assert await broker.publish([]) == []
        await eventually(lambda: _count_is(broker, queue, 2))

    async def test_a_message_the_broker_cannot_take_is_refused_not_sent(
            self, broker: Any, namespace: str) -> None:
        """What a message carries decides these: never sent, never raised, so that a caller
        drops it instead of retrying forever; the others of the batch go out."""
        queue = f"{namespace}.q"
        await broker.declare(queue)
        bad = [Outgoing("q" * 256, b"a", "r1"),  # a queue name holds 255 bytes
               Outgoing("é" * 150, b"b", "r2"),  # 150 code points, 300 bytes
               Outgoing("amq.rabbitmq.reply-to.abcd.x", b"c", "r3"),
               Outgoing(queue, b"d", "i" * 256)]
        results = await broker.publish([out(queue, 1), *bad, out(queue, 2)])
        assert results[0] is True and results[-1] is True, results
        for refused in results[1:-1]:
            assert isinstance(refused, Refused) and not refused, results
            assert refused.reason
        assert "255" in results[1].reason
        await eventually(lambda: _count_is(broker, queue, 2))
        assert await broker.publish([out(queue, 3)]) == [True]  # the broker still works

    async def test_exchange_routes_by_key_and_a_missing_one_is_unroutable(
            self, broker: Any, namespace: str) -> None:
        queue, exchange = f"{namespace}.q", f"{namespace}.x.q"
        await broker.declare(queue)
        assert await broker.publish([Outgoing("k", b"1", "m1", exchange=exchange)]) == [False]
        await broker.bind(exchange, "k", queue)
        await broker.bind(exchange, "k", queue)  # again: fine
        assert await broker.publish([
            Outgoing("k", b"1", "m1", exchange=exchange),
            Outgoing("other", b"2", "m2", exchange=exchange),
            Outgoing(queue, b"3", "m3")]) == [True, False, True]
        await eventually(lambda: _count_is(broker, queue, 2))

    async def test_queue_exists_and_consumer_count(self, broker: Any, namespace: str) -> None:
        queue = f"{namespace}.q"
        assert not await broker.queue_exists(queue)
        assert await broker.consumer_count(queue) == 0
        await broker.declare(queue)
        assert await broker.queue_exists(queue)

        async def handler(delivery: Delivery) -> None:
            await delivery.ack()

        await broker.consume(queue, handler, prefetch=1)
        assert await broker.consumer_count(queue) == 1
        await broker.cancel(queue)
        await eventually(lambda: _consumers_are(broker, queue, 0))
        await broker.delete(queue)
        assert not await broker.queue_exists(queue)

    async def test_redeclare_with_other_type_is_a_config_error(self, broker: Any,
                                                               namespace: str) -> None:
        queue = f"{namespace}.q"
        await broker.declare(queue)
        await broker.declare(queue)  # the same arguments: fine
        with pytest.raises(ConfigError, match="CLOUDBUNCH_QUEUE_TYPE"):
            await broker.declare_own(queue)
        assert await broker.publish([out(queue, 1)]) == [True]  # the broker still works

    async def test_an_own_queue_with_expires_is_deleted_once_idle(self, broker: Any,
                                                                   namespace: str) -> None:
        """``x-expires``, as the Client's generated reply queues use it: a consumer keeps the
        queue, a declare renews it (a passive one too), publishing to it does not; once idle
        for that long it is gone, with its binding (a crashed frontend leaves nothing)."""
        queue, exchange = f"{namespace}.own", f"{namespace}.x.own"
        await broker.declare_own(queue, expires=0.6)
        await broker.bind(exchange, "k", queue)

        async def handler(delivery: Delivery) -> None:
            await delivery.ack()

        await broker.consume(queue, handler, prefetch=1)
        await asyncio.sleep(1.0)
        assert await broker.consumer_count(queue) == 1  # consumed: in use, kept
        await broker.cancel(queue)
        await asyncio.sleep(0.3)
        await broker.declare_own(queue, expires=0.6)  # renews the lease
        await asyncio.sleep(0.3)
        assert await broker.publish([out(queue, 1)]) == [True]  # still there; not a use
        await asyncio.sleep(1.0)
        assert not await broker.queue_exists(queue)
        assert await broker.publish([out(queue, 2),
                                     Outgoing("k", b"3", "m3", exchange=exchange)]) == [
            False, False]

    async def test_order_of_500_messages_is_kept(self, broker: Any, namespace: str) -> None:
        queue = f"{namespace}.q"
        await broker.declare(queue)
        results = await broker.publish([out(queue, i) for i in range(500)])
        assert results == [True] * 500
        got: list[int] = []
        headers: list[Any] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            got.append(int(delivery.body))
            headers.append((delivery.message_id, getattr(delivery, "headers", {})))
            await delivery.ack()
            if len(got) == 500:
                done.set()

        # prefetch 1: handlers run one at a time, so arrival order is delivery order.
        await broker.consume(queue, handler, prefetch=1)
        await asyncio.wait_for(done.wait(), 30)
        assert got == list(range(500))
        assert headers[7] == ("m7", {"x-test": "yes"})

    async def test_reject_requeues_with_redelivered_flag(self, broker: Any,
                                                         namespace: str) -> None:
        queue = f"{namespace}.q"
        await broker.declare(queue)
        seen: list[tuple[bytes, bool]] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            seen.append((delivery.body, delivery.redelivered))
            if not delivery.redelivered:
                await delivery.reject(requeue=True)
                await delivery.ack()  # settled already: a no-op, not an error
            else:
                await delivery.ack()
                done.set()

        await broker.consume(queue, handler, prefetch=1)
        await broker.publish([out(queue, "x")])
        await asyncio.wait_for(done.wait(), 10)
        assert seen == [(b"x", False), (b"x", True)]
        await eventually(lambda: _count_is(broker, queue, 0))

    async def test_reject_without_requeue_drops(self, broker: Any, namespace: str) -> None:
        queue = f"{namespace}.q"
        await broker.declare(queue)
        seen: list[bytes] = []

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.body)
            await delivery.reject(requeue=False)

        await broker.consume(queue, handler, prefetch=4)
        await broker.publish([out(queue, 1), out(queue, 2)])
        await eventually(lambda: _true(len(seen) == 2))
        await asyncio.sleep(0.2)
        assert seen == [b"1", b"2"]
        await broker.cancel(queue)
        assert await broker.message_count(queue) == 0

    async def test_prefetch_bounds_unsettled_deliveries(self, broker: Any,
                                                        namespace: str) -> None:
        queue = f"{namespace}.q"
        await broker.declare(queue)
        held: list[Delivery] = []
        running = 0
        peak = 0

        async def handler(delivery: Delivery) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.05)
            running -= 1
            held.append(delivery)  # not acknowledged: keeps its prefetch slot

        await broker.consume(queue, handler, prefetch=3)
        await broker.publish([out(queue, i) for i in range(10)])
        await eventually(lambda: _true(len(held) == 3))
        await asyncio.sleep(0.3)
        assert len(held) == 3 and peak <= 3 and peak >= 2  # concurrent, up to prefetch
        for delivery in held[:2]:
            await delivery.ack()
        await eventually(lambda: _true(len(held) == 5))
        await broker.cancel(queue)
        # The 3 unacknowledged and the 5 never delivered are back in the queue.
        await eventually(lambda: _count_is(broker, queue, 8))
        await held[2].ack()  # after cancel: a no-op, the message stays queued
        await asyncio.sleep(0.1)
        assert await broker.message_count(queue) == 8

    async def test_cancel_lets_running_handlers_finish(self, broker: Any,
                                                       namespace: str) -> None:
        queue = f"{namespace}.q"
        await broker.declare(queue)
        started = asyncio.Event()
        finished: list[bytes] = []

        async def handler(delivery: Delivery) -> None:
            started.set()
            await asyncio.sleep(0.3)
            await delivery.ack()
            finished.append(delivery.body)

        await broker.consume(queue, handler, prefetch=1)
        await broker.publish([out(queue, 1), out(queue, 2)])
        await asyncio.wait_for(started.wait(), 10)
        await broker.cancel(queue)
        assert finished == [b"1"]
        await eventually(lambda: _count_is(broker, queue, 1))

    async def test_handler_exception_requeues(self, broker: Any, namespace: str) -> None:
        queue = f"{namespace}.q"
        await broker.declare(queue)
        calls: list[bool] = []
        done = asyncio.Event()

        async def handler(delivery: Delivery) -> None:
            calls.append(delivery.redelivered)
            if len(calls) == 1:
                raise RuntimeError("handler bug")
            await delivery.ack()
            done.set()

        await broker.consume(queue, handler, prefetch=1)
        await broker.publish([out(queue, 1)])
        await asyncio.wait_for(done.wait(), 10)
        assert calls == [False, True]


    async def test_consume_needs_a_declared_queue(self, broker: Any, namespace: str) -> None:
        async def handler(delivery: Delivery) -> None:
            await delivery.ack()

        with pytest.raises(ConfigError, match="no such queue"):
            await broker.consume(f"{namespace}.nope", handler, prefetch=1)
        await broker.declare(f"{namespace}.q")  # the broker still works
        assert await broker.publish([out(f"{namespace}.q", 1)]) == [True]


async def _count_is(broker: Any, queue: str, n: int) -> bool:
    return bool(await broker.message_count(queue) == n)


async def _consumers_are(broker: Any, queue: str, n: int) -> bool:
    return bool(await broker.consumer_count(queue) == n)


async def _gone(broker: Any, queue: str) -> bool:
    return not await broker.queue_exists(queue)


async def _true(value: bool) -> bool:
    return value


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    async def broker(self) -> AsyncIterator[MemoryBroker]:
        broker = MemoryBroker()
        await broker.connect()
        yield broker
        await broker.close()

    @pytest.fixture
    async def second(self, broker: MemoryBroker) -> AsyncIterator[MemoryBroker]:
        other = broker.connection()
        await other.connect()
        yield other
        await other.close()

    async def test_messages_lists_ready_bodies(self, broker: MemoryBroker) -> None:
        await broker.declare("q")
        await broker.publish([out("q", 1), out("q", 2)])
        assert broker.messages("q") == [b"1", b"2"]
        assert broker.messages("missing") == []

    async def test_requeue_goes_to_the_head(self, broker: MemoryBroker) -> None:
        await broker.declare("q")
        await broker.publish([out("q", 1), out("q", 2), out("q", 3)])
        first: list[Delivery] = []

        async def handler(delivery: Delivery) -> None:
            first.append(delivery)

        await broker.consume("q", handler, prefetch=1)
        await eventually(lambda: _true(len(first) == 1))
        await broker.cancel("q")
        assert broker.messages("q") == [b"1", b"2", b"3"]

    async def test_close_stops_consumers_and_publishing(self, broker: MemoryBroker) -> None:
        await broker.declare("q")
        seen: list[bytes] = []

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.body)
            await delivery.ack()

        await broker.consume("q", handler, prefetch=2)
        await broker.close()
        assert await broker.consumer_count("q") == 0
        with pytest.raises(PublishFailed):
            await broker.publish([out("q", 1)])
        await broker.connect()
        assert await broker.publish([out("q", 1)]) == [True]
        await asyncio.sleep(0.05)
        assert seen == [] and broker.messages("q") == [b"1"]

    async def test_delete_cancels_consumers(self, broker: MemoryBroker) -> None:
        await broker.declare("q")

        async def handler(delivery: Delivery) -> None:
            await delivery.ack()

        await broker.consume("q", handler, prefetch=1)
        await broker.delete("q")
        assert not await broker.queue_exists("q")
        assert await broker.publish([out("q", 1)]) == [False]


async def test_a_crashed_clients_generated_reply_queue_goes_by_itself() -> None:
    """The Client's generated reply queue on the in-memory broker: gone once its
    connection dropped without a close, as on RabbitMQ; a named one stays."""
    from worker_sdk.client import Client

    broker = MemoryBroker()
    await broker.connect()
    client = Client(broker.connection(), "ns", reply_queue_expires=0.2)
    named = Client(broker.connection(), "ns", reply_queue="ns.frontend",
                   reply_queue_expires=0.2)
    await client.start()
    await named.start()
    await asyncio.sleep(0.4)
    assert await broker.queue_exists(client.reply_queue)  # consumed: kept
    await client.broker.close()  # the process dies: its consumers go, no delete
    await named.broker.close()
    await asyncio.sleep(0.4)
    assert broker.queues() == ["ns.frontend"]
