"""Child processes (routers, workers, gateways) of the tests and the benchmarks."""

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


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: the repository importable, no CLOUDBUNCH_* leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDBUNCH_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A child process whose output (stdout and stderr) goes to a temporary file, never to a
    pipe that can fill up and block it."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, out: IO[bytes]) -> None:
        self.name = name
        self.process = process
        self._out = out

    @classmethod
    async def spawn(cls, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` in the repository, with :func:`child_env` unless ``env`` is given."""
        out = tempfile.TemporaryFile()  # noqa: SIM115 - open as long as the process; close()
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=str(REPO), env=env or child_env(), stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=out)
        return cls(name, process, out)

    @classmethod
    async def python(cls, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """``python ARGS`` with this interpreter."""
        return await cls.spawn(name, [sys.executable, *args], env)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def output(self, tail: int | None = None) -> str:
        """What the process wrote so far (its last ``tail`` characters, if given)."""
        if self._out.closed:
            return ""
        # pread: seeking the shared file would move the child's write position too.
        fd = self._out.fileno()
        text = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
        return text if tail is None else text[-tail:]

    def check_alive(self) -> None:
        """Raise, with what the process wrote, if it has exited."""
        if self.process.returncode is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n"
                               f"{self.output(4000)}")

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; return the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.kill()
        return await self.process.wait()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def close(self) -> None:
        self._out.close()
