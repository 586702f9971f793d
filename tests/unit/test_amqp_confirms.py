"""The wave publish's confirms (worker_sdk.amqp._send_confirmed) on a stand-in channel.

What RabbitMQ cannot be made to do on cue: a confirmation cancelled by its closing channel
must be that message's outcome, while the caller's own cancellation (a step cancelled, a
publish timeout) must still cancel the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiormq import spec
from aiormq.exceptions import ChannelInvalidStateError

from worker_sdk.amqp import _send_confirmed
from worker_sdk.broker import Outgoing


class StandInChannel:
    """The aiormq.Channel attributes the wave publish uses, and the confirms it awaits."""

    number = 1
    is_closed = False

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._Channel__lock = asyncio.Lock()
        self.delivery_tag = 0
        self.confirmations: dict[int, asyncio.Future[Any]] = {}
        self.message_id_delivery_tag: dict[str, int] = {}
        self.write_queue: asyncio.Queue[Any] = asyncio.Queue()
        self.store: list[asyncio.Future[Any]] = []

    @property
    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        async with self._Channel__lock:
            yield

    def create_future(self) -> asyncio.Future[Any]:
        """As aiormq's: a future its close rejects."""
        future = self.loop.create_future()
        self.store.append(future)
        return future

    def close(self, exc: BaseException) -> None:
        """As aiormq's close: every future of its store gets the exception."""
        self.is_closed = True
        for future in self.store:
            if not future.done():
                future.set_exception(exc)


def _frames(n: int) -> list[tuple[Outgoing, bytes | spec.Basic.Properties]]:
    return [(Outgoing("q", b"x", f"m{i}", {}), b"frame") for i in range(n)]


async def _sent(channel: StandInChannel, n: int) -> None:
    while len(channel.confirmations) < n:
        await asyncio.sleep(0)


async def test_each_confirm_is_its_message_s_outcome_even_a_cancelled_one() -> None:
    channel = StandInChannel()
    task = asyncio.create_task(_send_confirmed(channel, _frames(3)))  # type: ignore[arg-type]
    await _sent(channel, 3)
    ack = spec.Basic.Ack(delivery_tag=1)
    channel.confirmations[1].set_result(ack)
    channel.confirmations[2].cancel()  # the channel closed under it
    channel.confirmations[3].set_exception(ConnectionError("lost"))
    outcomes = await task
    assert outcomes[0] is ack
    assert isinstance(outcomes[1], asyncio.CancelledError)
    assert isinstance(outcomes[2], ConnectionError)
    assert channel.write_queue.qsize() == 1  # the three publishes went out in one write


async def test_the_caller_s_cancellation_is_not_swallowed() -> None:
    channel = StandInChannel()
    task = asyncio.create_task(_send_confirmed(channel, _frames(2)))  # type: ignore[arg-type]
    await _sent(channel, 2)
    channel.confirmations[1].set_result(spec.Basic.Ack(delivery_tag=1))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_publish_timeout_is_a_timeout() -> None:
    channel = StandInChannel()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await _send_confirmed(channel, _frames(2))  # type: ignore[arg-type]


@pytest.mark.parametrize("reason", [asyncio.CancelledError(), ConnectionError("closed")])
async def test_a_closing_channel_fails_its_pending_confirms_as_outcomes(
        reason: BaseException) -> None:
    """aiormq closes a channel with CancelledError by default: for a publish waiting on it,
    that is the message's outcome (PublishFailed above), never the step's cancellation."""
    channel = StandInChannel()
    task = asyncio.create_task(_send_confirmed(channel, _frames(2)))  # type: ignore[arg-type]
    await _sent(channel, 2)
    channel.confirmations[1].set_result(spec.Basic.Ack(delivery_tag=1))
    channel.close(reason)
    outcomes = await task
    assert isinstance(outcomes[0], spec.Basic.Ack)
    assert type(outcomes[1]) is type(reason)
    assert channel.message_id_delivery_tag == {}


async def test_a_publish_waits_for_the_lock_while_another_holds_it() -> None:
    channel = StandInChannel()
    async with channel.lock:
        task = asyncio.create_task(
            _send_confirmed(channel, _frames(1)))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert channel.write_queue.qsize() == 0 and channel.delivery_tag == 0
    await _sent(channel, 1)
    channel.confirmations[1].set_result(spec.Basic.Ack(delivery_tag=1))
    assert isinstance((await task)[0], spec.Basic.Ack)


async def test_a_channel_whose_close_rejected_its_confirms_takes_no_more_publishes() -> None:
    """Between aiormq rejecting a closing channel's futures and the channel reading as
    closed, a publish must not stage a confirmation nothing would ever settle."""
    channel = StandInChannel()
    first = asyncio.create_task(_send_confirmed(channel, _frames(1)))  # type: ignore[arg-type]
    await _sent(channel, 1)
    channel.close(ConnectionError("closed"))
    channel.is_closed = False  # not yet marked closed
    assert isinstance((await first)[0], ConnectionError)
    with pytest.raises(ChannelInvalidStateError):
        await asyncio.wait_for(
            _send_confirmed(channel, _frames(1)), 2)  # type: ignore[arg-type]
