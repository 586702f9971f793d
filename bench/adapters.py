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

``--base COMMIT`` compares these adapters with another commit's: it checks that commit out
into a temporary worktree (as ``python -m bench.compare`` does) and runs this script
``--runs`` times for each side, alternately (A B B A ...), each run in a process of its own
whose ``PYTHONPATH`` puts that side's ``router`` and ``worker_sdk`` first; it prints both
sides and their paired ratios, and writes ``bench/results/adapters-<time>.json``, which
``python -m bench.report --take FILE --as NAME`` puts in the docs::

    .venv/bin/python -m bench.adapters --base HEAD~1 --lanes 1 --runs 4

Every queue and key it makes is deleted before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

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
        return await _cost_per(messages, lambda: _together(lane, lanes, done))
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
        return await _cost_per(steps, all_lanes)
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


async def _cost_per(count: int, work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    """Client CPU and wall-clock time (microseconds) per item of ``work``."""
    started, wall = time.process_time(), time.perf_counter()
    await work()
    return ((time.process_time() - started) / count * 1e6,
            (time.perf_counter() - wall) / count * 1e6)


FIGURES = (("amqp_cpu_per_message", "AMQP publish + delivery + ack: client CPU per message"),
           ("amqp_wall_per_message", "AMQP publish + delivery + ack: wall-clock per message"),
           ("redis_cpu_per_step", "Redis step (commit + discard): client CPU per step"),
           ("redis_wall_per_step", "Redis step (commit + discard): wall-clock per step"))
"""The figures of a run, in milliseconds (wall-clock per item: with ``--lanes 1``, the
latency of one)."""


async def measure(args: argparse.Namespace) -> dict[str, list[float]]:
    """Every figure's value in each of ``args.runs`` runs (milliseconds)."""
    values: dict[str, list[float]] = {key: [] for key, _ in FIGURES}
    for _ in range(args.runs):
        amqp = await amqp_cpu_per_message(args.amqp_url, args.queue_type, args.messages,
                                          args.lanes)
        redis = await redis_cpu_per_step(args.redis_url, args.messages, args.lanes)
        for (key, _), value in zip(FIGURES, (*amqp, *redis), strict=True):
            values[key].append(value / 1000)
    return values


def figures(values: dict[str, list[float]], lanes: int) -> dict[str, Any]:
    """The results-file form of :func:`measure`'s values (plain data: the process that
    prints them may have another commit's ``bench`` on its path)."""
    return {key: {"label": f"{label} ({lanes} lane(s))", "unit": "ms",
                  "median": statistics.median(values[key]), "runs": values[key]}
            for key, label in FIGURES}


def _run_side(tree: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One run of this script with ``tree``'s adapters; its figures."""
    from bench import compare
    command = [sys.executable, os.path.abspath(__file__), "--json", "--runs", "1",
               "--lanes", str(args.lanes), "--messages", str(args.messages),
               "--queue-type", args.queue_type, "--amqp-url", args.amqp_url,
               "--redis-url", args.redis_url]
    done = subprocess.run(command, env=compare.tree_env(tree), capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise compare.CompareError(
            f"bench/adapters.py failed with the {tree.name} tree's adapters ({tree.path}, "
            f"exit {done.returncode}):\n{tail}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return data


def against_base(args: argparse.Namespace, argv: list[str]) -> int:
    """``--base``: both sides alternately, their paired ratios, a results file."""
    from bench import compare
    from bench.run import machine
    head = compare.Tree("head", compare.REPO, compare._describe(compare.REPO))
    try:
        with compare.base_tree(args.base) as base:
            compare.say(f"adapters of {head.revision!r} (this checkout) against "
                        f"{base.revision!r}: {args.runs} alternated run(s) each, "
                        f"{args.lanes} lane(s)")
            got = compare.run({"base": base, "head": head}, args.runs, [], compare.say,
                              runner=lambda tree, _: _run_side(tree, args))
        table = compare.compare(got["base"], got["head"])
    except compare.CompareError as exc:
        print(f"python -m bench.adapters: {exc}", file=sys.stderr)
        return 2
    print(compare.format_comparison(table))
    compare.write_results("adapters", {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "plan": {"command": " ".join(["python -m bench.adapters", *argv]),
                 "base": base.revision, "head": head.revision, "runs": args.runs,
                 "lanes": args.lanes, "messages": args.messages,
                 "queue_type": args.queue_type},
        "machine": machine(),
        "figures": {f.key: f.to_json() for f in table}})
    return 0


async def run(args: argparse.Namespace) -> None:
    values = await measure(args)
    if args.json:
        print(json.dumps({"figures": figures(values, args.lanes)}))
        return
    where = os.path.dirname(os.path.dirname(os.path.abspath(redis_store.__file__)))
    for key, label in FIGURES:
        runs = values[key]
        print(f"{where}: {label}: {statistics.median(runs) * 1000:.0f} us (median of "
              f"{len(runs)}; {', '.join(f'{v * 1000:.0f}' for v in runs)}), "
              f"{args.lanes} lane(s)")


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
    p.add_argument("--base", metavar="COMMIT",
                   help="compare with this commit's adapters (alternated runs, paired ratios)")
    p.add_argument("--json", action="store_true",
                   help="print the figures as one line of JSON (what --base reads)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.base is not None:
        return against_base(args, argv)
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        asyncio.run(run(args))
    else:
        uvloop.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
