"""How every long-running command stops: SIGTERM (a supervisor) or SIGINT (Ctrl-C)."""

from __future__ import annotations

import asyncio
import signal

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
