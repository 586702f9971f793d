"""Fixtures of the node-loss tests: the local clusters of ``scripts/cluster`` (started here
if they are not running) and a harness whose processes use every node."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest

from tests.chaos.conftest import ChaosHarness
from tests.integration.conftest import pytest_runtest_makereport  # noqa: F401
from tests.integration.procs import opened

from . import nodes


@pytest.fixture(scope="session")
def local_clusters() -> Iterator[None]:
    """The 3-node RabbitMQ cluster and the 6-node Redis Cluster, up (``scripts/cluster
    start`` starts what is not running; ``scripts/test`` cleans them after the pass)."""
    if os.geteuid() != 0:
        raise AssertionError("the node-loss tests run RabbitMQ nodes as the 'rabbitmq' user: "
                             "run them as root (scripts/test does, in its cluster pass)")
    done = subprocess.run([str(nodes.SCRIPT), "start"], capture_output=True, text=True,
                          timeout=300, check=False)
    if done.returncode != 0:
        raise AssertionError(f"scripts/cluster start failed:\n{done.stdout}{done.stderr}")
    yield


class ClusterHarness(ChaosHarness):
    """A harness on the local clusters: its processes get every node's URL; its own raw
    connection goes to the first node that answers (and is re-opened after a node loss)."""

    async def open(self) -> None:
        last: BaseException | None = None
        for url in self.amqp_url.split(","):
            try:
                self._conn = await aio_pika.connect(url, timeout=5)
                break
            except Exception as exc:
                last = exc
        else:
            raise AssertionError(f"no RabbitMQ cluster node answered: {last}")
        self._channel = await self._conn.channel(publisher_confirms=True)
        await self.store.ping()


@pytest.fixture
async def clustered(request: pytest.FixtureRequest, namespace: str,
                    local_clusters: None) -> AsyncIterator[ClusterHarness]:
    """A harness on its own namespace on the local clusters; processes stopped, queues and
    keys deleted after (the processes' output printed when the test failed)."""
    async with opened(ClusterHarness(namespace, nodes.AMQP_URLS, nodes.REDIS_URL),
                      request.node) as h:
        yield h
        # Nodes a test stopped or killed come back for the next test.
        await asyncio.wait_for(nodes.start(), 300)
