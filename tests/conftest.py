"""Fixtures shared by the test suites."""

from __future__ import annotations

import os
import secrets

import pytest

from worker_sdk.settings import DEFAULT_AMQP_URL


@pytest.fixture
def namespace() -> str:
    """A random namespace, so tests can share one RabbitMQ and one Redis."""
    return "t" + secrets.token_hex(4)


@pytest.fixture
def amqp_url() -> str:
    """The RabbitMQ under test (CLOUDBUNCH_AMQP_URL, else the local default)."""
    return os.environ.get("CLOUDBUNCH_AMQP_URL", DEFAULT_AMQP_URL)
