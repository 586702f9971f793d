"""``cloudbunch purge``: delete a namespace's queues and Redis keys.

RabbitMQ's AMQP protocol cannot list queues, so the queues are found by name: the shared
ones (ingress, replies, dead letters), the service and reply queues named in the stored
sessions (frames on a stack, where notices go), and any service named with ``--service``.
A generated reply queue of ``worker_sdk.Client`` that no session names expires by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from worker_sdk import wire
from worker_sdk.errors import ConfigError

from .config import ServerSettings

if TYPE_CHECKING:
    from .redis_store import RedisStore

log = logging.getLogger(__name__)


async def purge(config: ServerSettings, services: Sequence[str],
                confirm: Callable[[str], bool]) -> int:
    """Delete the namespace's queues and keys once ``confirm(plan)`` agrees; return 0, or 1
    when the person declined. Refuses (ConfigError) while a router consumes the namespace."""
    from worker_sdk.amqp import AmqpBroker

    from .redis_store import RedisStore

    ns = config.namespace
    store = RedisStore(config.redis_url, ns)
    broker = AmqpBroker(config.amqp_url, config.queue_type, name="cloudbunch-purge")
    try:
        await store.connect()
        await broker.connect()
        shared = wire.queue_names(ns)
        for role in ("ingress", "replies"):
            consumers = await broker.consumer_count(shared[role])
            if consumers:
                raise ConfigError(
                    f"{consumers} consumer(s) on {shared[role]}: a router is serving namespace "
                    f"{ns!r}; stop every router of it first")
        named = set(shared.values()) | {wire.service_queue(ns, s) for s in services}
        named |= await _named_in_sessions(store, ns)
        queues = sorted([q for q in named if await broker.queue_exists(q)])
        if not queues and not await store.namespace_has_keys():
            print(f"cloudbunch purge: namespace {ns!r}: no queue of it and no Redis key "
                  "found, nothing to delete (is --namespace / CLOUDBUNCH_NAMESPACE right?)")
            return 0
        plan = (f"namespace {ns!r}: {len(queues)} queue(s) "
                f"({', '.join(queues) if queues else 'none found'}) and every Redis key "
                f"under '{ns}:'")
        if not services:
            # AMQP cannot list queues: those of services no stored session has open stay.
            print(f"cloudbunch purge: a service queue is found only while a session of "
                  f"{ns!r} has that service open; name the others with --service NAME")
        if not confirm(plan):
            print("nothing deleted")
            return 1
        for queue in queues:
            await broker.delete(queue)
        keys = await store.delete_namespace()
        print(f"deleted {len(queues)} queue(s) and {keys} key(s) of namespace {ns!r}")
        return 0
    finally:
        await broker.close()
        await store.close()


async def _named_in_sessions(store: RedisStore, ns: str) -> set[str]:
    """Service and reply queues of the namespace that its stored sessions name."""
    from .core import Record

    found: set[str] = set()
    async for blob in store.records():
        try:
            rec = Record.decode(blob)
        except Exception:  # a record we cannot read names nothing we could trust
            log.warning("event=purge_unreadable_record namespace=%s", ns)
            continue
        found |= {wire.service_queue(ns, frame.service) for frame in rec.stack}
        targets = [rec.chain.reply_to] if rec.chain is not None else []
        targets += [m.reply_to for m in rec.waiting if isinstance(m, wire.ClientMessage)]
        targets += [h.message.reply_to for h in rec.held]
        # Only queues of this namespace: a session may name another party's queue.
        found |= {q for q in targets if q.startswith(ns + ".")}
    return found
