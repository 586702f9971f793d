"""The CPU time of processes, read from /proc; the bench's child processes are
:class:`harness.processes.Proc`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from harness.processes import REPO, Proc, child_env

__all__ = ["REPO", "CpuMeter", "Proc", "busy_seconds", "child_env", "cpu_seconds", "find_pids"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` so far (None when it cannot be read)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def syscalls(pid: int) -> tuple[int, int] | None:
    """Read and write system calls of ``pid`` so far (/proc/PID/io; None if unreadable)."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return int(fields["syscr"]), int(fields["syscw"])


def find_pids(comm: str) -> list[int]:
    """Pids whose command name (/proc/PID/comm) is ``comm`` (e.g. redis-server, beam.smp)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if (entry / "comm").read_text().strip() == comm:
                found.append(int(entry.name))
    return sorted(found)


def busy_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (/proc/stat), or None."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
    values = [int(v) for v in first[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICKS


class CpuMeter:
    """CPU seconds used by named processes between :meth:`start` and :meth:`stop`.

    ``used["others"]`` is what every other process of the machine used meanwhile (all busy
    CPU time minus the named processes): the load this measurement competed with.
    """

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = {name: list(p) for name, p in pids.items() if p}
        self._start: dict[str, float] = {}
        self._began = 0.0
        self.used: dict[str, float] = {}
        self.seconds = 0.0
        self._calls: dict[str, tuple[int, int]] = {}
        self.calls: dict[str, tuple[int, int]] = {}
        """Read and write system calls of each named process in the window."""

    def _read_calls(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for name, pids in self.pids.items():
            values = [syscalls(pid) for pid in pids]
            if all(v is not None for v in values):
                out[name] = (sum(v[0] for v in values if v is not None),
                             sum(v[1] for v in values if v is not None))
        return out

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pids in self.pids.items():
            values = [cpu_seconds(pid) for pid in pids]
            if all(v is not None for v in values):
                out[name] = sum(v for v in values if v is not None)
        busy = busy_seconds()
        if busy is not None:
            out["system"] = busy
        return out

    def start(self) -> None:
        self._calls = self._read_calls()
        self._start = self._read()
        self._began = time.monotonic()

    def stop(self) -> None:
        end = self._read()
        calls = self._read_calls()
        self.calls = {name: (calls[name][0] - self._calls[name][0],
                             calls[name][1] - self._calls[name][1])
                      for name in calls if name in self._calls}
        self.seconds = time.monotonic() - self._began
        self.used = {name: end[name] - self._start[name] for name in end
                     if name in self._start}
        if "system" in self.used:
            ours = sum(v for k, v in self.used.items() if k != "system")
            self.used["others"] = max(0.0, self.used.pop("system") - ours)

    def others_cores(self) -> float:
        """CPUs' worth of work other processes did during the window."""
        return self.used.get("others", math.nan) / self.seconds if self.seconds else math.nan


def run_loop(coro: Coroutine[Any, Any, None], *, uvloop: bool) -> None:
    """Run a bench child process's main coroutine on uvloop or asyncio, as its peer does."""
    if uvloop:
        import uvloop as loop  # type: ignore[import-not-found,unused-ignore]

        loop.run(coro)
    else:
        asyncio.run(coro)
