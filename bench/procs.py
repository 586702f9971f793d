"""Child processes of the bench and the CPU time of processes, read from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
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


class CpuMeter:
    """CPU seconds used by named processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = {name: list(p) for name, p in pids.items() if p}
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pids in self.pids.items():
            values = [cpu_seconds(pid) for pid in pids]
            if all(v is not None for v in values):
                out[name] = sum(v for v in values if v is not None)
        return out

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        end = self._read()
        self.used = {name: end[name] - self._start[name] for name in end
                     if name in self._start}


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
