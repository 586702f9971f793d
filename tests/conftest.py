"""Fixtures shared by the test suites."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import pytest

from tests.cluster import LocalCluster
from worker_sdk.settings import DEFAULT_AMQP_URL


@pytest.fixture
def namespace() -> str:
    """A random namespace, so tests can share one RabbitMQ and one Redis."""
    return "t" + secrets.token_hex(4)


@pytest.fixture
def amqp_url() -> str:
    """The RabbitMQ under test (CLOUDBUNCH_AMQP_URL, else the local default)."""
    return os.environ.get("CLOUDBUNCH_AMQP_URL", DEFAULT_AMQP_URL)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A Redis Cluster store URL: CLOUDBUNCH_REDIS_CLUSTER_URL, else a local 3-master cluster
    started on first use (needs redis-server and redis-cli) and stopped after the run."""
    url = os.environ.get("CLOUDBUNCH_REDIS_CLUSTER_URL")
    if url:
        yield url
        return
    cluster = LocalCluster()
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()
