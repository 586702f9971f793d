"""The adapters alone, in one process: ``python -m bench.adapters``.

What the router's I/O costs its own process, without the router, the worker or a second
process on the CPU, so that two versions of an adapter can be compared with less noise than
the pair bench carries:

- **amqp**: ``AmqpBroker`` publishes (confirmed, persistent, mandatory) from ``--lanes``
  concurrent publishers to a queue of ``--queue-type``, and consumes and acknowledges every
  message in the same process: client CPU per message (publish + delivery + ack).
- **redis**: ``RedisStore`` steps ``--lanes`` sessions concurrently, each step a commit
  (compare-and-set, one outbox entry) and the discard of that entry, as a routed step does
  when its record is cached: client CPU per step.

To compare with the adapters of another commit, run it on each, alternately, a few times
(as a script, so that ``PYTHONPATH`` decides whose ``router`` and ``worker_sdk`` it imports)::

    git worktree add /tmp/before <commit>
    PYTHONPATH=/tmp/before .venv/bin/python bench/adapters.py     # the adapters of <commit>
    .venv/bin/python bench/adapters.py                            # these

Every queue and key it makes is deleted before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from router import redis_store
from router.redis_store import RedisStore
from router.store import DEFAULT_REDIS_URL
from worker_sdk.amqp import AmqpBroker
from worker_sdk.broker import Delivery, Outgoing
from worker_sdk.settings import DEFAULT_AMQP_URL

BODY = b"x" * 200
"""About a dispatch's size."""


async def amqp_cpu_per_message(url: str, queue_type: str, messages: int,
                               lanes: int) -> tuple[float, float]:
    """Client CPU and wall-clock time (microseconds) per message published, delivered and
    acknowledged."""
    broker = AmqpBroker(url, queue_type, name="bench-adapters")
    await broker.connect()
    queue = f"bench{secrets.token_hex(4)}.adapters"
    await broker.declare(queue)
    received = 0
    done = asyncio.Event()

    async def on_delivery(delivery: Delivery) -> None:
        nonlocal received
        await delivery.ack()
        received += 1
        if received == messages:
            done.set()

    sent = 0

    async def lane() -> None:
        nonlocal sent
        while sent < messages:
            sent += 1
            result = await broker.publish([Outgoing(queue, BODY, f"m{sent}",
                                                    {"x-cb-sent-ms": "0"})])
            if result != [True]:
                raise RuntimeError(f"publish to {queue} not confirmed: {result}")

    try:
        await broker.consume(queue, on_delivery, prefetch=64)
        return await _cpu_per(messages, lambda: _together(lane, lanes, done))
    finally:
        await broker.cancel(queue, drain=0)
        await broker.delete(queue)
        await broker.close()


async def redis_cpu_per_step(url: str, steps: int, lanes: int) -> tuple[float, float]:
    """Client CPU and wall-clock time (microseconds) per step: a commit and the discard of
    its outbox entry (with ``--lanes 1``, the wall-clock time is the latency of a step)."""
    namespace = f"bench{secrets.token_hex(4)}"
    store = RedisStore(url, namespace)
    later = int(time.time() * 1000) + 3_600_000
    taken = 0

    async def lane(session: str) -> None:
        nonlocal taken
        version = 0
        while taken < steps:
            taken += 1
            if not await store.commit(session, version, BODY, append=[BODY],
                                      expire_at_ms=later):
                raise RuntimeError(f"commit of {session} at version {version} refused")
            version += 1
            await store.discard(session, [BODY])

    async def all_lanes() -> None:
        await asyncio.gather(*(lane(f"s{i}") for i in range(lanes)))

    try:
        return await _cpu_per(steps, all_lanes)
    finally:
        redis = store._redis
        keys = [key async for key in redis.scan_iter(match=f"{namespace}:*")]
        if keys:
            await redis.delete(*keys)
        await store.close()


async def _together(lane: Callable[[], Awaitable[None]], lanes: int,
                    done: asyncio.Event) -> None:
    await asyncio.gather(*(lane() for _ in range(lanes)))
    await done.wait()


async def _cpu_per(count: int, work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Client CPU and wall-clock time (microseconds) per item of ``work``."""
    started, wall = time.process_time(), time.perf_counter()
    await work()
    return ((time.process_time() - started) / count * 1e6,
            (time.perf_counter() - wall) / count * 1e6)


async def run(args: argparse.Namespace) -> None:
    amqp: list[tuple[float, float]] = []
    redis: list[tuple[float, float]] = []
    for _ in range(args.runs):
        amqp.append(await amqp_cpu_per_message(args.amqp_url, args.queue_type,
                                               args.messages, args.lanes))
        redis.append(await redis_cpu_per_step(args.redis_url, args.messages, args.lanes))
    where = os.path.dirname(os.path.dirname(os.path.abspath(redis_store.__file__)))
    for label, values in (("AMQP publish + delivery + ack", amqp),
                          ("Redis step (commit + discard)", redis)):
        cpu, wall = [v for v, _ in values], [w for _, w in values]
        print(f"{where}: {label}: {statistics.median(cpu):.0f} us client CPU (median of "
              f"{len(values)}; {', '.join(f'{v:.0f}' for v in cpu)}), "
              f"{statistics.median(wall):.0f} us wall-clock per item with {args.lanes} "
              f"lane(s) ({', '.join(f'{w:.0f}' for w in wall)})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.adapters", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=6000, metavar="N",
                   help="messages (and steps) per run [default: 6000]")
    p.add_argument("--lanes", type=int, default=8, metavar="N",
                   help="concurrent publishers and sessions [default: 8]")
    p.add_argument("--runs", type=int, default=3, metavar="N", help="[default: 3]")
    p.add_argument("--queue-type", default="quorum", choices=("quorum", "classic"))
    p.add_argument("--amqp-url", default=os.environ.get("CLOUDBUNCH_AMQP_URL",
                                                        DEFAULT_AMQP_URL))
    p.add_argument("--redis-url", default=os.environ.get("CLOUDBUNCH_REDIS_URL",
                                                         DEFAULT_REDIS_URL))
    args = p.parse_args(argv)
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
