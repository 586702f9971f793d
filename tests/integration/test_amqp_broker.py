"""AmqpBroker on the real RabbitMQ: the shared broker contract plus RabbitMQ specifics."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator

import aio_pika
import aiormq
import pytest

from tests.unit.test_memory_broker import BrokerContract, eventually, out
from worker_sdk import amqp_reader
from worker_sdk.amqp import AmqpBroker
from worker_sdk.broker import Delivery, Outgoing, Refused
from worker_sdk.errors import BrokerUnavailable, PublishFailed

pytestmark = pytest.mark.infra


@pytest.fixture
async def broker(amqp_url: str, namespace: str) -> AsyncIterator[AmqpBroker]:
    broker = AmqpBroker(amqp_url, connect_timeout=10, name=f"test {namespace}")
    await broker.connect()  # fails (not skips) the test when RabbitMQ is down
    created: list[str] = []
    original = broker._declare

    async def tracking(queue: str, **kwargs: object) -> None:
        created.append(queue)
        await original(queue, **kwargs)  # type: ignore[arg-type]

    broker._declare = tracking  # type: ignore[method-assign]
    try:
        yield broker
    finally:
        for queue in set(created):
            await broker.cancel(queue, drain=0)
            await broker.delete(queue)
        await broker.close()
        await delete_exchanges(amqp_url, namespace)


async def delete_exchanges(amqp_url: str, namespace: str) -> None:
    """Delete the exchanges the contract tests bind (``NS.x.q``)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(f"{namespace}.x.q")


@pytest.fixture
async def raw(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    connection = await aio_pika.connect(amqp_url)
    try:
        yield connection
    finally:
        await connection.close()


class TestAmqpBroker(BrokerContract):
    """The contract of tests/unit/test_memory_broker.py, on RabbitMQ."""

    @pytest.fixture
    async def second(self, amqp_url: str, namespace: str) -> AsyncIterator[AmqpBroker]:
        other = AmqpBroker(amqp_url, connect_timeout=10, name=f"test {namespace} (2)")
        await other.connect()
        yield other
        await other.close()


async def test_declare_arguments_are_exactly_the_queue_type(
        broker: AmqpBroker, raw: aio_pika.abc.AbstractConnection, namespace: str) -> None:
    queue = f"{namespace}.shared"
    await broker.declare(queue)
    channel = await raw.channel()
    # A declare with the same flags and arguments succeeds; any difference is refused.
    await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await channel.declare_queue(queue, durable=True, arguments={
            "x-queue-type": "quorum", "x-delivery-limit": 5})
    channel = await raw.channel()
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
        await channel.declare_queue(queue, durable=False,
                                    arguments={"x-queue-type": "quorum"})


async def test_classic_queue_type_and_own_queue(
        amqp_url: str, raw: aio_pika.abc.AbstractConnection, namespace: str) -> None:
    broker = AmqpBroker(amqp_url, "classic", connect_timeout=10)
    await broker.connect()
    shared, own = f"{namespace}.shared", f"{namespace}.frontend"
    try:
        await broker.declare(shared)
        await broker.declare_own(own)
        channel = await raw.channel()
        await channel.declare_queue(shared, durable=True, arguments={"x-queue-type": "classic"})
        await channel.declare_queue(own, durable=True)  # no arguments at all
        channel = await raw.channel()
        with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(shared, durable=True,
                                        arguments={"x-queue-type": "quorum"})
    finally:
        await broker.delete(shared)
        await broker.delete(own)
        await broker.close()


async def test_published_messages_are_persistent_msgpack(
        broker: AmqpBroker, raw: aio_pika.abc.AbstractConnection, namespace: str) -> None:
    queue = f"{namespace}.q"
    await broker.declare(queue)
    assert await broker.publish([Outgoing(queue, b"\x80", "id-1", {"h": "v"})]) == [True]
    channel = await raw.channel()
    q = await channel.get_queue(queue)
    message = await q.get(timeout=5)
    assert message is not None
    assert message.body == b"\x80"
    assert message.message_id == "id-1"
    assert message.content_type == "application/msgpack"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert (message.headers or {}).get("h") == "v"
    await message.ack()


async def test_many_returns_and_duplicate_ids_in_one_batch(broker: AmqpBroker,
                                                           namespace: str) -> None:
    queue = f"{namespace}.q"
    await broker.declare(queue)
    batch = []
    expected = []
    for i in range(200):
        if i % 3 == 0:
            batch.append(Outgoing(f"{namespace}.missing{i}", b"x", f"id{i}"))
            expected.append(False)
        else:
            batch.append(Outgoing(queue, b"x", f"id{i}"))
            expected.append(True)
    # The same message id once returned and once routed, in one call.
    batch += [Outgoing(f"{namespace}.missing", b"x", "dup"), Outgoing(queue, b"x", "dup")]
    expected += [False, True]
    assert await broker.publish(batch) == expected
    await eventually(lambda: _count(broker, queue, expected.count(True)))


async def _count(broker: AmqpBroker, queue: str, n: int) -> bool:
    return await broker.message_count(queue) == n


async def test_confirms_are_awaited_together(broker: AmqpBroker, namespace: str) -> None:
    queue = f"{namespace}.q"
    await broker.declare(queue)
    started = time.perf_counter()
    assert all(await broker.publish([out(queue, i) for i in range(2000)]))
    # One confirm round trip at a time would take seconds; many in flight take well under.
    assert time.perf_counter() - started < 5


async def test_nack_raises_publish_failed(
        broker: AmqpBroker, raw: aio_pika.abc.AbstractConnection, namespace: str) -> None:
    queue = f"{namespace}.full"
    channel = await raw.channel()
    # A queue that refuses (nacks) publishes once full: a real negative confirm.
    await channel.declare_queue(queue, durable=True, arguments={
        "x-max-length": 1, "x-overflow": "reject-publish"})
    try:
        assert await broker.publish([out(queue, 1)]) == [True]
        with pytest.raises(PublishFailed, match="nack"):
            await broker.publish([out(queue, 2)])
        # The broker keeps working after a nack.
        assert await broker.publish([out(f"{namespace}.nothing", 3)]) == [False]
    finally:
        await broker.delete(queue)


async def test_headers_too_big_for_a_frame_are_refused_and_the_connection_lives(
        broker: AmqpBroker, namespace: str) -> None:
    """RabbitMQ closes the whole connection (FRAME_ERROR) on a content header bigger than a
    frame, and on a publish to a direct reply-to name it cannot decode (INTERNAL_ERROR):
    neither is ever sent, and the other messages of the batch go out on the same connection."""
    queue = f"{namespace}.q"
    await broker.declare(queue)
    huge = Outgoing(queue, b"x", "huge", {"tracestate": "v" * 200_000})
    reply_to = Outgoing("amq.rabbitmq.reply-to.g2dkAA.x", b"x", "rt")
    results = await broker.publish([out(queue, 1), huge, reply_to, out(queue, 2)])
    assert results[0] is True and results[3] is True, results
    assert isinstance(results[1], Refused) and "frame" in results[1].reason, results
    assert isinstance(results[2], Refused), results
    assert broker._connection is not None and not broker._connection.is_closed
    assert await broker.publish([out(queue, 3)]) == [True]
    await eventually(lambda: _count(broker, queue, 3))


async def test_publish_on_closed_broker_raises(broker: AmqpBroker, namespace: str) -> None:
    await broker.close()
    with pytest.raises(PublishFailed):
        await broker.publish([out(f"{namespace}.q", 1)])
    await broker.connect()


async def test_ack_after_confirm_keeps_the_message_until_acked(
        broker: AmqpBroker, amqp_url: str, namespace: str) -> None:
    """A delivery handled but not yet acknowledged comes back when its consumer dies."""
    src, dst = f"{namespace}.src", f"{namespace}.dst"
    await broker.declare(src)
    await broker.declare(dst)
    worker = AmqpBroker(amqp_url, connect_timeout=10)
    await worker.connect()
    confirmed = asyncio.Event()
    release = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        # Forward, ack only after the forward is confirmed; stop before acking once.
        assert await worker.publish([Outgoing(dst, delivery.body, "fwd")]) == [True]
        confirmed.set()
        if not delivery.redelivered:
            await release.wait()
        await delivery.ack()

    try:
        await worker.consume(src, handler, prefetch=1)
        await broker.publish([out(src, "work")])
        await asyncio.wait_for(confirmed.wait(), 10)
        assert await broker.message_count(dst) == 1
        await worker.close()  # dies before the ack: the delivery must come back
    finally:
        release.set()
    await eventually(lambda: _count(broker, src, 1))
    seen: list[tuple[bytes, bool]] = []

    async def second(delivery: Delivery) -> None:
        seen.append((delivery.body, delivery.redelivered))
        await delivery.ack()

    await broker.consume(src, second, prefetch=1)
    await eventually(lambda: _true(len(seen) == 1))
    assert seen == [(b"work", True)]


async def _true(value: bool) -> bool:
    return value


async def test_ack_on_a_closed_channel_is_swallowed(broker: AmqpBroker, amqp_url: str,
                                                    namespace: str) -> None:
    queue = f"{namespace}.q"
    await broker.declare(queue)
    other = AmqpBroker(amqp_url, connect_timeout=10)
    await other.connect()
    held: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        held.append(delivery)

    await other.consume(queue, handler, prefetch=1)
    await broker.publish([out(queue, 1)])
    await eventually(lambda: _true(len(held) == 1))
    await other.close()
    await held[0].ack()  # no exception: the broker redelivers instead
    await held[0].reject()
    await eventually(lambda: _count(broker, queue, 1))


async def test_connect_failure_is_one_clear_line() -> None:
    port = 1  # nothing listens there
    broker = AmqpBroker(f"amqp://guest:s3cret@127.0.0.1:{port}/", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        await broker.connect()
    assert time.monotonic() - started < 10
    text = str(info.value)
    assert text.startswith(f"RabbitMQ is not reachable (amqp://guest:***@127.0.0.1:{port}/: ")
    assert text.endswith(": start it or correct CLOUDBUNCH_AMQP_URL (--amqp-url)")
    assert "s3cret" not in text and "\n" not in text


async def test_consumer_comes_back_after_the_connection_is_closed_by_the_broker(
        amqp_url: str, namespace: str) -> None:
    """Close our own connection from the broker side (only ours, by its unique name)."""
    name = f"cb-test-{secrets.token_hex(6)}"
    queue = f"{namespace}.q"
    broker = AmqpBroker(amqp_url, connect_timeout=10, name=name, give_up_after=60)
    await broker.connect()
    try:
        await broker.declare(queue)
        seen: list[bytes] = []

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.body)
            await delivery.ack()

        await broker.consume(queue, handler, prefetch=5)
        assert await broker.consumer_count(queue) == 1
        await _close_connection_named(name)
        await eventually(lambda: _consumers(broker, queue, 1), timeout=30)
        for _ in range(100):
            try:
                if await broker.publish([out(queue, "after")]) == [True]:
                    break
            except PublishFailed:
                await asyncio.sleep(0.2)
        await eventually(lambda: _true(b"after" in seen), timeout=30)
        lost = asyncio.create_task(broker.wait_lost())
        await asyncio.sleep(0.5)
        assert not lost.done()  # the connection is back: not lost
        lost.cancel()
    finally:
        await broker.delete(queue)
        await broker.close()


async def _consumers(broker: AmqpBroker, queue: str, n: int) -> bool:
    try:
        return await broker.consumer_count(queue) == n
    except Exception:
        return False


async def _close_connection_named(name: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-q", "list_connections", "pid", "client_properties",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        stdout, _ = await proc.communicate()
        pids = [line.split("\t", 1)[0] for line in stdout.decode().splitlines()
                if f'"{name}"' in line or f"<<\"{name}\">>" in line]
        if pids:
            break
        if loop.time() > deadline:
            raise AssertionError(f"connection {name} not listed by rabbitmqctl")
        await asyncio.sleep(0.5)
    for pid in pids:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl", "-q", "close_connection", pid, "test: reconnect",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await proc.communicate()


async def test_wait_lost_returns_when_the_broker_stays_away(namespace: str) -> None:
    """Simulated: a broker whose connection reports down for longer than give_up_after."""
    broker = AmqpBroker("amqp://guest:guest@127.0.0.1:5672/", give_up_after=0.3)

    class Down:
        is_closed = False
        connected = asyncio.Event()

    broker._connection = Down()  # type: ignore[assignment]
    await asyncio.wait_for(broker.wait_lost(), 5)
    broker._connection = None



async def test_concurrent_publishes_share_socket_writes(broker: AmqpBroker,
                                                      namespace: str) -> None:
    """aiormq writes every frame by itself, and lets one publish at a time through a channel,
    one event-loop turn each. The broker publishes on several channels and its transport
    joins the frames of one turn: 50 concurrent steps' publishes cost far fewer than 50
    socket writes."""
    queue = f"{namespace}.q"
    await broker.declare(queue)
    await broker.publish([out(queue, 0)])  # warm: channels open, nothing else pending
    assert broker._connection is not None
    writer = broker._connection.kwargs["transport_factory"].writer
    frames, sent = writer.frames, writer.sent
    results = await asyncio.gather(*(broker.publish([out(queue, i)]) for i in range(1, 51)))
    assert results == [[True]] * 50
    assert writer.frames - frames >= 50
    assert writer.sent - sent <= 25, f"{writer.sent - sent} socket writes for 50 publishes"
    await eventually(lambda: _count(broker, queue, 51))


async def test_frames_are_read_in_bulk(broker: AmqpBroker, namespace: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker's connections read with worker_sdk.amqp_reader: one socket read hands
    aiormq many frames (50 deliveries are 150 frames, plus the confirms)."""
    assert aiormq.connection.FrameReceiver is amqp_reader.BufferedFrameReceiver
    reads: list[int] = []
    decode = amqp_reader.decode

    def counting(data: bytes, start: int) -> tuple[list[amqp_reader.Frame], int]:
        frames, at = decode(data, start)
        reads.append(len(frames))
        return frames, at
    monkeypatch.setattr(amqp_reader, "decode", counting)
    queue = f"{namespace}.q"
    await broker.declare(queue)
    got: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery)
        await delivery.ack()
    await broker.publish([out(queue, i) for i in range(50)])
    await broker.consume(queue, handler, prefetch=100)
    await eventually(lambda: len(got) == 50)
    assert sum(reads) >= 150
    assert len(reads) <= sum(reads) / 4, f"{len(reads)} socket reads for {sum(reads)} frames"


async def test_a_body_of_many_frames_arrives_whole(broker: AmqpBroker, namespace: str) -> None:
    """Bodies bigger than a frame come in several body frames, read in bulk and joined
    (and an empty body in none)."""
    queue = f"{namespace}.q"
    await broker.declare(queue)
    bodies = [secrets.token_bytes(300_000), b"", b"x"]
    got: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        got.append(delivery.body)
        await delivery.ack()
    await broker.publish([Outgoing(queue, body, f"m{i}", {}) for i, body in enumerate(bodies)])
    await broker.consume(queue, handler, prefetch=10)
    await eventually(lambda: len(got) == 3)
    assert got == bodies


async def test_closing_a_consumer_s_channel_cancels_its_running_handlers(
        broker: AmqpBroker, namespace: str) -> None:
    """As aiormq does for its consumer tasks: a handler still running when its channel
    closes is cancelled (its delivery, unacknowledged, is the broker's to deliver again)."""
    queue = f"{namespace}.q"
    await broker.declare(queue)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(delivery: Delivery) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise
    await broker.publish([out(queue, 1)])
    await broker.consume(queue, handler, prefetch=1)
    await asyncio.wait_for(started.wait(), 10)
    consumer = broker._consumers[queue]
    underlay = await consumer.channel.get_underlay_channel()
    await underlay.close()
    await asyncio.wait_for(cancelled.wait(), 5)
    await eventually(lambda: not consumer.inflight)


async def test_a_connection_lost_while_a_consumer_starts_is_waited_out(
        broker: AmqpBroker, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose connection is cut as it starts consuming (a broker restart) does not
    fail: the setup is made again once the connection is back, and messages flow."""
    queue = f"{namespace}.q"
    await broker.declare(queue)
    original = aiormq.Channel.basic_consume
    calls = 0

    async def cut_once(self: aiormq.Channel, *args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED - test")
        return await original(self, *args, **kwargs)  # type: ignore[arg-type]
    monkeypatch.setattr(aiormq.Channel, "basic_consume", cut_once)
    seen: list[bytes] = []

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery.body)
        await delivery.ack()

    await broker.consume(queue, handler, prefetch=4)
    assert calls == 2
    await broker.publish([out(queue, "after the cut")])
    await eventually(lambda: _true(seen == [b"after the cut"]))
