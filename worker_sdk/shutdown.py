"""How every long-running command stops: SIGTERM (a supervisor) or SIGINT (Ctrl-C)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_on_signals() -> asyncio.Event:
    """An event that SIGTERM or SIGINT sets, handled on the running loop from now on.

    The handlers stay until the loop closes (or :func:`forget_signals`), so a second Ctrl-C
    during the shutdown that follows the first does not interrupt it.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    return stop


def forget_signals() -> None:
    """Give SIGTERM and SIGINT back their default handling, on a loop that lives on."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)


async def until_stopped(stop: asyncio.Event, *failures: Awaitable[object]) -> bool:
    """Wait for ``stop`` or the first of ``failures`` (a lost connection, a component that
    died); True when ``stop`` came first. Whatever still waits is cancelled."""
    waits = {asyncio.ensure_future(stop.wait()), *map(asyncio.ensure_future, failures)}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in done:  # the caller asks the failed component itself what went wrong
        if not task.cancelled():
            task.exception()
    return stop.is_set()


async def close_all(*steps: tuple[Callable[[], Awaitable[object]] | None, float | None]
                    ) -> None:
    """Run each ``(close, seconds)`` step in order, each bounded by its seconds (None: no
    bound); a step that fails or overruns does not keep the next from running, so a
    shutdown always finishes. A ``None`` close is skipped (a part never started)."""
    for close, seconds in steps:
        if close is None:
            continue
        with contextlib.suppress(Exception):
            await asyncio.wait_for(close(), seconds)
