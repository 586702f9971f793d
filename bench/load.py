"""A closed-loop load generator: N lanes, each sending one request at a time and waiting."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .stats import percentile

Request = Callable[[str], Awaitable[None]]
"""One full round trip for one key (a session): send, then wait for its answer."""


@dataclass(slots=True)
class LoadResult:
    """What one measured window saw."""

    completed: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000


async def closed_loop(request: Request, keys: Sequence[str], *, in_flight: int,
                      warmup: float, duration: float,
                      on_window: Callable[[bool], None] | None = None,
                      drain_timeout: float = 30.0) -> LoadResult:
    """Run ``in_flight`` lanes over ``keys`` for ``warmup + duration`` seconds.

    Lane i owns keys[i::in_flight], so one key never has two requests in flight (a session
    queues a second message, which would measure waiting, not work). Round trips that
    complete inside the window after the warmup count (steady state: the system is already
    loaded when the window opens). ``on_window(True/False)`` is called
    at the window's start and end (to read CPU counters). The lanes then finish their
    current request (at most ``drain_timeout`` s) so nothing is left in flight.
    """
    if len(keys) < in_flight:
        raise ValueError(f"{in_flight} in flight needs at least as many keys, not {len(keys)}")
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    stop = asyncio.Event()
    window: list[float] = [math.inf, math.inf]
    latencies: list[float] = []
    completed = 0
    failure: list[BaseException] = []

    async def lane(owned: Sequence[str]) -> None:
        nonlocal completed
        i = 0
        while not stop.is_set():
            key = owned[i % len(owned)]
            i += 1
            began = time.perf_counter()
            await request(key)
            done = time.perf_counter()
            if window[0] <= done <= window[1]:
                completed += 1
                latencies.append(done - began)

    lanes = [asyncio.create_task(lane(keys[i::in_flight])) for i in range(in_flight)]

    def crashed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            failure.append(task.exception())  # type: ignore[arg-type]
            stop.set()

    for task in lanes:
        task.add_done_callback(crashed)
    try:
        await _sleep_or_stop(stop, warmup)
        window[0] = time.perf_counter()
        window[1] = window[0] + duration
        if on_window:
            on_window(True)
        await _sleep_or_stop(stop, duration)
        if on_window:
            on_window(False)
        measured = time.perf_counter() - window[0]
        stop.set()
        _done, pending = await asyncio.wait(lanes, timeout=drain_timeout)
        if pending:
            raise TimeoutError(f"{len(pending)} requests still unanswered {drain_timeout} s "
                               "after the window closed")
    finally:
        for task in lanes:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*lanes, return_exceptions=True)
    if failure:
        raise failure[0]
    return LoadResult(completed, min(measured, duration), latencies)


async def interleaved(requests: Mapping[str, Request], keys: Sequence[str], *,
                      warmup: float, duration: float,
                      on_window: Callable[[bool], None] | None = None) -> dict[str, LoadResult]:
    """Latency at 1 in flight of several paths at once: one request at a time, taking the
    paths in turn (their order rotating every round, so none always follows the same one),
    for ``warmup + duration`` seconds; each path's round trips that complete inside the
    window after the warmup count.

    Measured one after the other, each path's window would meet whatever the machine did in
    those seconds (a busy host, the broker digesting the last throughput window), and their
    ratio would carry it; taken in turn, every path sees the same moments.
    """
    if not requests or not keys:
        raise ValueError("interleaved() needs at least one path and one key")
    names = list(requests)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    began = time.perf_counter()
    opened = began + warmup
    closes = opened + duration
    window_open = False
    rounds = 0
    while True:
        now = time.perf_counter()
        if now >= closes:
            break
        if not window_open and now >= opened:
            window_open = True
            if on_window:
                on_window(True)
        key = keys[rounds % len(keys)]
        shift = rounds % len(names)
        rounds += 1
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            await requests[name](key)
            done = time.perf_counter()
            if opened <= started and done <= closes:
                latencies[name].append(done - started)
    if on_window:
        if not window_open:
            on_window(True)
        on_window(False)
    return {name: LoadResult(len(latencies[name]), duration, latencies[name])
            for name in names}


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_all(request: Request, keys: Sequence[str], *, concurrency: int,
                  timeout: float) -> float:
    """One request per key, ``concurrency`` at a time; return the seconds it took."""
    began = time.monotonic()
    gate = asyncio.Semaphore(concurrency)

    async def one(key: str) -> None:
        async with gate:
            await request(key)

    async with asyncio.timeout(timeout):
        await asyncio.gather(*(one(k) for k in keys))
    return time.monotonic() - began
