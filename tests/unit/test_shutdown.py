"""The one way every long-running command stops: SIGTERM or SIGINT set its stop event."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from worker_sdk.shutdown import forget_signals, stop_on_signals


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
