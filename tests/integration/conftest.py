"""Fixtures of the end-to-end suites: a namespace with router and worker processes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from router.store import DEFAULT_REDIS_URL

from .procs import Harness, opened


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    # Keep each phase's report on the item, so teardown knows whether the test failed.
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """The Redis under test: the single server (CLOUDBUNCH_REDIS_URL, else the local
    default), then a Redis Cluster, so every end-to-end test runs against both."""
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture
async def e2e(request: pytest.FixtureRequest, namespace: str, amqp_url: str,
              redis_url: str) -> AsyncIterator[Harness]:
    """A harness on its own namespace; processes stopped and queues and keys deleted after.

    The processes' output is printed when the test failed.
    """
    async with opened(Harness(namespace, amqp_url, redis_url), request.node) as harness:
        yield harness


@pytest.fixture
async def ops(request: pytest.FixtureRequest, namespace: str,
              amqp_url: str) -> AsyncIterator[Harness]:
    """A harness on the single Redis server only (operations tests need no cluster run)."""
    url = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)
    async with opened(Harness(namespace, amqp_url, url), request.node) as harness:
        yield harness
