"""Fixtures of the chaos suites: a harness that survives the connection cuts it causes."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import pytest

from router.store import DEFAULT_REDIS_URL

# The hook keeps each phase's report on the item, so teardown knows whether the test failed.
from tests.integration.conftest import pytest_runtest_makereport  # noqa: F401
from tests.integration.procs import Harness, opened

TAIL = 40
"""Lines of each process's output printed after a failure."""


class ChaosHarness(Harness):
    """A :class:`Harness` whose own broker connection can be re-opened after a cut."""

    async def reopen(self) -> None:
        """Drop the (maybe closed) connection and open a new one."""
        old = self._conn
        self._conn = self._channel = None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        for attempt in range(20):
            try:
                await self.open()
                return
            except Exception:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.5)

    async def stop_all(self, failed: bool) -> None:
        """Stop every process; after a failure print the end of each one's output (the
        whole of it, for thirty processes logging every turn, would bury the report)."""
        await asyncio.gather(*(p.stop() for p in self.procs), return_exceptions=True)
        for proc in self.procs:
            if failed:
                lines = proc.output().splitlines()
                print(f"----- {proc.name} (pid {proc.pid}, exit {proc.returncode}), last "
                      f"{min(len(lines), TAIL)} of {len(lines)} lines -----")
                print("\n".join(lines[-TAIL:]))
            proc.close()

    async def cleanup(self) -> None:
        # The last cut may have closed our connection: the queues must still be deleted.
        with contextlib.suppress(Exception):
            await self.reopen()
        await super().cleanup()


@pytest.fixture
def redis_url() -> str:
    """The Redis under test (CLOUDBUNCH_REDIS_URL, else the local default)."""
    return os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture
async def chaos(request: pytest.FixtureRequest, namespace: str, amqp_url: str,
                redis_url: str) -> AsyncIterator[ChaosHarness]:
    """A harness on its own namespace; processes stopped, queues and keys deleted after.

    The processes' output is printed when the test failed.
    """
    async with opened(ChaosHarness(namespace, amqp_url, redis_url), request.node) as harness:
        yield harness
