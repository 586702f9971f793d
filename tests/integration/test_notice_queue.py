"""A gateway's notice queue is made as a quorum queue (it outlives a cluster node), and an
older gateway's classic queue is used as it is rather than refused."""

from __future__ import annotations

import pytest

from router.channels.base import declare_notice_queue
from worker_sdk.amqp import AmqpBroker
from worker_sdk.errors import ConfigError

pytestmark = pytest.mark.infra


async def test_a_new_notice_queue_is_quorum_and_an_old_classic_one_is_kept(
        namespace: str, amqp_url: str) -> None:
    broker = AmqpBroker(amqp_url, "quorum", name=f"test {namespace}")
    await broker.connect()
    new, old = f"{namespace}.web.notices", f"{namespace}.telegram.notices"
    try:
        await declare_notice_queue(broker, new)
        await declare_notice_queue(broker, new)  # a second replica, or a restart
        # RabbitMQ refuses a re-declare that leaves out the queue type of a quorum queue.
        with pytest.raises(ConfigError, match="already exists with other settings"):
            await broker.declare_own(new, durable=True, single_active=True)

        await broker.declare_own(old, durable=True, single_active=True)  # classic, as before
        await declare_notice_queue(broker, old)
        await broker.declare_own(old, durable=True, single_active=True)  # still classic
        with pytest.raises(ConfigError):
            await broker.declare_own(old, durable=True, single_active=True, replicated=True)
    finally:
        for queue in (new, old):
            await broker.delete(queue)
        await broker.close()
