"""Child processes of the bench and the CPU time of processes, read from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
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
        self._start = self._read()
        self._began = time.monotonic()

    def stop(self) -> None:
        end = self._read()
        self.seconds = time.monotonic() - self._began
        self.used = {name: end[name] - self._start[name] for name in end
                     if name in self._start}
        if "system" in self.used:
            ours = sum(v for k, v in self.used.items() if k != "system")
            self.used["others"] = max(0.0, self.used.pop("system") - ours)

    def others_cores(self) -> float:
        """CPUs' worth of work other processes did during the window."""
        return self.used.get("others", math.nan) / self.seconds if self.seconds else math.nan


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: the repository importable, no CLOUDBUNCH_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUNCH_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A child process; its output goes to a temporary file (never a pipe that can fill)."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, out: IO[bytes]) -> None:
        self.name = name
        self.process = process
        self._out = out

    @classmethod
    async def spawn(cls, name: str, argv: list[str]) -> Proc:
        out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=str(REPO), env=child_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=out)
        return cls(name, process, out)

    @classmethod
    async def python(cls, name: str, *args: str) -> Proc:
        """``python ARGS`` with this interpreter."""
        return await cls.spawn(name, [sys.executable, *args])

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def output(self, tail: int = 4000) -> str:
        """The last ``tail`` characters the process wrote."""
        if self._out.closed:
            return ""
        self._out.seek(0)
        return self._out.read().decode(errors="replace")[-tail:]

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n"
                               f"{self.output()}")

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        code = await self.process.wait()
        return code

    def close(self) -> None:
        self._out.close()
