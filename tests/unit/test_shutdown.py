"""The one way every long-running command stops: SIGTERM or SIGINT set its stop event."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from worker_sdk.shutdown import close_all, forget_signals, stop_on_signals, until_stopped


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_sets_the_stop_event_and_a_second_one_is_absorbed(sig: int) -> None:
    stop = stop_on_signals()
    try:
        assert not stop.is_set()
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(stop.wait(), 5)
        os.kill(os.getpid(), sig)  # during the shutdown: no KeyboardInterrupt, no exit
        await asyncio.sleep(0.05)
        assert stop.is_set()
    finally:
        forget_signals()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_until_stopped_tells_a_stop_from_a_failure_and_cancels_the_rest() -> None:
    stop = asyncio.Event()
    lost = asyncio.Event()
    never = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(until_stopped(stop, lost.wait(), never))
    await asyncio.sleep(0)
    stop.set()
    assert await waiting is True
    assert never.cancelled()  # nothing is left waiting

    async def dies() -> None:
        raise RuntimeError("the component died")

    assert await until_stopped(asyncio.Event(), dies()) is False  # its error is not lost:
    # the caller asks the component; no "exception was never retrieved" either way


async def test_close_all_runs_every_step_in_order_whatever_one_does() -> None:
    done: list[str] = []

    async def ok(name: str) -> None:
        done.append(name)

    async def fails() -> None:
        done.append("fails")
        raise ConnectionError("gone")

    async def hangs() -> None:
        done.append("hangs")
        await asyncio.Event().wait()

    await close_all((lambda: ok("first"), 1.0), (fails, 1.0), (None, 1.0), (hangs, 0.05),
                    (lambda: ok("last"), None))
    assert done == ["first", "fails", "hangs", "last"]
