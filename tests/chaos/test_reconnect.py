"""Reconnection that really recovers: after the broker closes every connection, each router
and worker consumes again within a bounded time and the work in flight completes; after
Redis kills every client connection, the routers go on as if nothing happened."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time

import pytest

from .conftest import ChaosHarness
from .flow import IDLE_S, SERVICES
from .load import (
    Cluster,
    Figures,
    Frontend,
    check,
    close_all_connections,
    drive,
    kill_redis_clients,
    make_plans,
    read_stacks,
    wait_drained,
    wait_last_timers,
)

pytestmark = [pytest.mark.infra, pytest.mark.disruptive]

RECOVERY_S = 30.0
"""The bound of the contract: a replica consumes again within 30 s of a lost connection."""
SESSIONS = 60
MESSAGES = 4


def small_cluster(chaos: ChaosHarness) -> Cluster:
    """Two routers and two workers serving every service. Turns take up to 0.3 s, so that
    about a third of the sessions have a chain in flight at any instant."""
    cluster = Cluster(chaos, {"turn_timeout": 2, "max_attempts": 10}, sleep=0.3)
    cluster.add_router()
    cluster.add_router()
    cluster.add_worker(SERVICES)
    cluster.add_worker(SERVICES)
    return cluster


def pids(cluster: Cluster) -> list[int]:
    return [s.proc.pid for s in cluster.slots if s.proc is not None]


async def start_load(chaos: ChaosHarness) -> tuple[
        random.Random, list, Cluster, list[int], Frontend, dict[str, int],  # type: ignore[type-arg]
        asyncio.Task[None]]:
    """Start the small cluster and a frontend driving SESSIONS conversations through it."""
    rng = random.Random(int(os.environ.get("CHAOS_SEED") or secrets.randbits(32)))
    plans, _ = make_plans(SESSIONS, MESSAGES, rng)
    cluster = small_cluster(chaos)
    await cluster.start()
    before = pids(cluster)
    front = Frontend(chaos, "reconnect-frontend")
    await front.start()
    consumers = dict(cluster.expected_consumers()) | {front.client.reply_queue: 1}
    load = asyncio.create_task(drive(front, plans, rng, spread=3.0, think=(0.1, 1.0),
                                     chain_timeout=45))
    return rng, plans, cluster, before, front, consumers, load


async def finish(chaos: ChaosHarness, cluster: Cluster, front: Frontend, load: asyncio.Task[None],
                 plans: list, figures: Figures) -> None:  # type: ignore[type-arg]
    """Let the load end, then check every chain, stack and queue against the model."""
    await load
    await wait_last_timers(front, plans, IDLE_S + 60)
    left = await wait_drained(chaos.ns, 20)
    stacks = await read_stacks(chaos, plans)
    await asyncio.sleep(0.5)
    check(plans, front, stacks, figures)
    figures.extra["undrained"] = len(left)
    figures.problems.extend(f"not drained: {q} {c}" for q, c in left.items())


@pytest.mark.timeout(180)
async def test_every_consumer_comes_back_after_the_broker_closes_all_connections(
        chaos: ChaosHarness, capsys: pytest.CaptureFixture[str]) -> None:
    _, plans, cluster, before, front, consumers, load = await start_load(chaos)
    try:
        await asyncio.sleep(2.5)
        in_flight = front.in_flight
        await close_all_connections("test_reconnect")
        cut = time.monotonic()  # the command returns once the connections are closed
        await chaos.reopen()
        await cluster.wait_consumers(RECOVERY_S, consumers)
        recovery = time.monotonic() - cut
        figures = Figures(cuts=1)
        await finish(chaos, cluster, front, load, plans, figures)
        # Exactly as many consumers as before: none missing, none restored twice.
        await cluster.wait_consumers(5, consumers)
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        await front.close()
    figures.extra |= {"in_flight_at_cut": in_flight, "recovery_s": round(recovery, 1),
                      "publish_retries": front.publish_retries, "notice_copies": front.copies}
    with capsys.disabled():
        print(f"\nreconnect (broker): {figures.line()}", flush=True)
    report = "\n".join([*figures.problems[:40], *cluster.unexpected])
    assert in_flight > 0, "nothing was in flight when the connections were closed"
    assert figures.bad == 0 and not figures.extra["undrained"], report
    assert pids(cluster) == before and not cluster.unexpected, report


@pytest.mark.timeout(180)
async def test_routers_keep_working_after_redis_kills_every_client_connection(
        chaos: ChaosHarness, capsys: pytest.CaptureFixture[str]) -> None:
    rng, plans, cluster, before, front, consumers, load = await start_load(chaos)
    killed: list[int] = []
    in_flight: list[int] = []
    try:
        for _ in range(3):
            await asyncio.sleep(1.0)
            in_flight.append(front.in_flight)
            killed.append(await kill_redis_clients(chaos.redis_url))
        figures = Figures(cuts=len(killed))
        await finish(chaos, cluster, front, load, plans, figures)
        # After the kills, a new conversation still completes promptly.
        fresh, _ = make_plans(5, 2, rng)
        for plan in fresh:
            plan.session, plan.ids = "after-" + plan.session, [f"after-{i}" for i in plan.ids]
        started = time.monotonic()
        await drive(front, fresh, rng, spread=0, think=(0, 0), chain_timeout=10)
        fresh_s = time.monotonic() - started
        await wait_last_timers(front, fresh, IDLE_S + 30)
        check(fresh, front, await read_stacks(chaos, fresh), after := Figures(), only=False)
        await cluster.wait_consumers(5, consumers)
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
        await front.close()
    figures.extra |= {"clients_killed": "+".join(map(str, killed)),
                      "in_flight_at_kills": "+".join(map(str, in_flight)),
                      "fresh_conversations_s": round(fresh_s, 2)}
    with capsys.disabled():
        print(f"\nreconnect (redis): {figures.line()}", flush=True)
    report = "\n".join([*figures.problems[:40], *after.problems, *cluster.unexpected])
    assert all(killed) and any(in_flight), (killed, in_flight)
    assert figures.bad == 0 and after.bad == 0 and not figures.extra["undrained"], report
    assert pids(cluster) == before and not cluster.unexpected, report
