"""Sustained faults under load: the guarantees of docs/protocol.md checked against a model.

Three router processes and three worker processes per service (four worker processes) run
the flow of :mod:`tests.chaos.flow` for several hundred sessions, while a fault injector
kills processes (``kill -9`` and SIGTERM, each replaced at once), pauses some (SIGSTOP for
longer than the turn timeout, then SIGCONT), closes every broker connection and kills every
Redis client connection, at random instants. Each session sends
its next message only after its previous chain finished, so the notices of a session have
one right order. The run is reproducible in its plan and schedule with ``CHAOS_SEED``.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time

import pytest

from router.partitions import partition_queues

from .conftest import ChaosHarness
from .flow import IDLE_S
from .load import (
    Faults,
    Figures,
    Frontend,
    check,
    drive,
    is_idle,
    make_plans,
    make_schedule,
    queue_counts,
    read_stacks,
    standard_cluster,
    wait_drained,
    wait_last_timers,
)

pytestmark = [pytest.mark.infra, pytest.mark.disruptive]

SESSIONS = int(os.environ.get("CHAOS_SESSIONS", "300"))
MESSAGES = 6
WINDOW = float(os.environ.get("CHAOS_WINDOW", "60"))
"""Seconds over which the load is spread and the faults fall."""
FAULTS = {"kill9": 16, "sigterm": 8, "freeze": 4, "amqp": 2, "redis": 2}
if os.environ.get("CHAOS_FAULTS"):  # development: e.g. kill9=4,sigterm=2,amqp=0,redis=0
    FAULTS = {k: int(v) for k, v in (kv.split("=") for kv in os.environ["CHAOS_FAULTS"].split(","))}
ACTIONS = {"reply", "open", "close", "replace", "pass", "fail"}


@pytest.mark.timeout(330)
@pytest.mark.parametrize("partitions", [0, 3], ids=["shared", "partitioned"])
async def test_no_loss_no_duplicate_no_disorder_under_kills_and_cuts(
        chaos: ChaosHarness, capsys: pytest.CaptureFixture[str], partitions: int) -> None:
    """Also with ``--partitions 3`` (docs/scaling.md): the same faults kill and freeze the
    partitions' owners, whose queues pass to the other replicas."""
    seed = int(os.environ.get("CHAOS_SEED") or secrets.randbits(32))
    rng = random.Random(seed)
    plans, actions = make_plans(SESSIONS, MESSAGES, rng)
    assert set(actions) == ACTIONS, actions
    chaos.queues.update(q.name for q in partition_queues(chaos.ns, partitions))
    cluster = standard_cluster(chaos, turn_timeout=2, max_attempts=10,
                               **({"partitions": partitions} if partitions else {}))
    await cluster.start()
    front = Frontend(chaos, partitions=partitions)
    await front.start()
    faults = Faults(cluster, rng)
    schedule = make_schedule(rng, (0.03 * WINDOW, 0.9 * WINDOW), FAULTS)
    started = time.monotonic()
    injector = asyncio.create_task(faults.run(schedule, started))
    try:
        await drive(front, plans, rng, spread=0.3 * WINDOW,
                    think=(0.05 * WINDOW, 0.19 * WINDOW), chain_timeout=45)
        await wait_last_timers(front, plans, IDLE_S + 60)
        await injector
        load_seconds = time.monotonic() - started
        recovery = await cluster.wait_consumers(30)
        left = await wait_drained(chaos.ns, 30)
        stacks = await read_stacks(chaos, plans)
        await asyncio.sleep(1.0)  # a late copy or a second run of a chain would show now
    finally:
        injector.cancel()
        await asyncio.gather(injector, return_exceptions=True)
    stats = await cluster.stop()
    after_stop = {q: c for q, c in (await queue_counts(chaos.ns)).items() if c[0] or c[1]}
    await front.close()

    figures = Figures(kills=faults.kills, cuts=faults.cuts)
    check(plans, front, stacks, figures)
    figures.extra = {
        "kill9": faults.counts["kill9"], "sigterm": faults.counts["sigterm"],
        "freezes": faults.counts["freeze"], "amqp_cuts": faults.counts["amqp"],
        "redis_cuts": faults.counts["redis"],
        "notice_copies": front.copies, "publish_retries": front.publish_retries,
        "chain_timeouts": front.chain_timeouts, "redispatches": cluster.redispatches(),
        "timer_sessions": sum(p.timer for p in plans),
        "idle_notices": sum(is_idle(n) for ns in front.by_session.values() for n in ns),
        **{k: stats.get(k, 0)
           for k in ("replies_dropped", "leftover_waits", "cas_retries", "handovers")},
        "unexpected_exits": len(cluster.unexpected),
        "unclean_stops": len(cluster.unclean_stops()), "undrained": len(left),
        "left_after_stop": len(after_stop), "load_s": round(load_seconds, 1),
        "total_s": round(time.monotonic() - started, 1), "seed": seed,
    }
    with capsys.disabled():
        print(f"\nchaos ({'partitioned' if partitions else 'shared'}): {figures.line()}",
              flush=True)
    report = "\n".join([*faults.journal, *figures.problems[:40], *cluster.unexpected,
                        *cluster.unclean_stops(), f"not drained: {left}",
                        f"left after stop: {after_stop}", f"last consumers wait {recovery:.1f}s"])
    assert figures.bad == 0, report
    assert faults.kills >= 20 and faults.cuts >= 3, report
    assert not left and not after_stop, report
    assert not cluster.unexpected and not cluster.unclean_stops(), report

