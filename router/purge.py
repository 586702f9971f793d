"""``cloudbunch purge``: delete a namespace's queues and Redis keys.

RabbitMQ's AMQP protocol cannot list queues. When the management API answers, every queue
whose name starts with ``NS.`` goes. Otherwise the queues are found by name: the shared ones
(ingress, replies, dead letters), the gateways' notice queues, the service queues the routers
noted (each router adds every service queue it dispatches to to the Redis set ``NS:queues``,
so they are found after their sessions ended), the service and reply queues named in the
stored sessions, each service named with ``--service`` and each queue named with ``--queue``.
A generated reply queue of ``worker_sdk.Client`` that nothing names expires by itself. The
exchanges the router declared (``NS.x.ingress``, ``NS.x.replies``) go too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from worker_sdk import wire
from worker_sdk.errors import ConfigError

from .channels.base import gateway_queues
from .config import ServerSettings

if TYPE_CHECKING:
    from .redis_store import RedisStore

log = logging.getLogger(__name__)


async def purge(config: ServerSettings, services: Sequence[str],
                confirm: Callable[[str], bool], *, queues: Sequence[str] = (),
                management_url: str | None = None) -> int:
    """Delete the namespace's queues, exchanges and keys once ``confirm(plan)`` agrees;
    return 0, or 1 when the person declined. Refuses (ConfigError) while a router consumes
    the namespace. With ``management_url``, every queue of the namespace the management API
    lists goes too; without it (or when it does not answer) the queues found by name."""
    from worker_sdk.amqp import AmqpBroker

    from .redis_store import RedisStore

    ns = config.namespace
    for queue in queues:
        if not queue.startswith(ns + "."):
            raise ConfigError(f"--queue {queue!r} is not a queue of namespace {ns!r}: its "
                              f"name must start with '{ns}.'")
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
        named = set(shared.values()) | set(gateway_queues(ns)) | set(queues)
        named |= {wire.service_queue(ns, s) for s in services}
        named |= await _named_in_sessions(store, ns)
        named |= {q for q in await store.known_queues() if q.startswith(ns + ".")}
        listed, why_not = await _listed(management_url, config.amqp_url, ns)
        found = sorted([q for q in named | listed if await broker.queue_exists(q)])
        exchanges = [x for x in wire.exchange_names(ns).values()
                     if await broker.exchange_exists(x)]
        if not found and not exchanges and not await store.namespace_has_keys():
            looked = ("no queue of it" if why_not is None else
                      f"no queue it could name ({why_not}: a frontend's own queue is found "
                      "only with --queue NAME)")
            print(f"cloudbunch purge: namespace {ns!r}: {looked} and no Redis key found, "
                  "nothing to delete (is --namespace / CLOUDBUNCH_NAMESPACE right?)")
            return 0
        plan = (f"namespace {ns!r}: {len(found)} queue(s) "
                f"({', '.join(found) if found else 'none found'}), "
                f"{len(exchanges)} exchange(s) and every Redis key under '{ns}:'")
        if why_not is not None:
            # AMQP cannot list queues: those nobody named stay.
            print(f"cloudbunch purge: {why_not}, so only queues found by name go: the "
                  f"service queues a router of {ns!r} dispatched to, others with --service "
                  "NAME; a frontend's own queue with --queue NAME")
        if not confirm(plan):
            print("nothing deleted")
            return 1
        for queue in found:
            await broker.delete(queue)
        for exchange in exchanges:
            await broker.delete_exchange(exchange)
        keys = await store.delete_namespace()
        print(f"deleted {len(found)} queue(s), {len(exchanges)} exchange(s) and {keys} "
              f"key(s) of namespace {ns!r}")
        return 0
    finally:
        await broker.close()
        await store.close()


async def _listed(management_url: str | None, amqp_url: str,
                  ns: str) -> tuple[set[str], str | None]:
    """The namespace's queues the management API lists, or why there are none."""
    from .status import ManagementUnavailable, management_queues

    if not management_url:
        return set(), "the management API is off (--management-url off)"
    try:
        rows = await asyncio.to_thread(management_queues, management_url, amqp_url)
    except ManagementUnavailable as exc:
        return set(), f"the management API ({management_url}) did not answer ({exc})"
    return {str(r["name"]) for r in rows if str(r.get("name", "")).startswith(ns + ".")}, None


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
