"""One node-loss run: routers and workers on the local clusters carry a steady load of the
chaos flow while a fault plan hurts the nodes; then every guarantee is checked against the
model and one summary line is printed, like the chaos suite's.

Recovery is measured by probes: right after each fault a new session sends one message, and
the time from the fault to that chain's last notice is the time to recover.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from router.partitions import partition_queues
from tests.chaos.flow import Model, text
from tests.chaos.load import (
    Cluster,
    Figures,
    Frontend,
    Plan,
    check,
    drive,
    make_plans,
    peek,
    read_stacks,
    standard_cluster,
)

from . import nodes
from .conftest import ClusterHarness

log = logging.getLogger(__name__)

SESSIONS = int(os.environ.get("CLUSTER_SESSIONS", "40"))
MESSAGES = int(os.environ.get("CLUSTER_MESSAGES", "6"))
SPREAD = 4.0
THINK = (1.0, 3.0)
CHAIN_TIMEOUT = 90.0
_probes = itertools.count(1)


@dataclass
class Run:
    """What a fault plan needs: the harness, the processes, the frontend, the clock."""

    harness: ClusterHarness
    cluster: Cluster
    front: Frontend
    t0: float
    probes: list[Plan] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    journal: list[str] = field(default_factory=list)
    before: Any = None
    """What the fault plan's preparation found before the load started."""

    def note(self, what: str) -> None:
        self.journal.append(f"{time.monotonic() - self.t0:6.1f}s {what}")
        log.info("%s", self.journal[-1])

    async def at(self, seconds: float) -> None:
        """Sleep until ``seconds`` after the load started."""
        delay = self.t0 + seconds - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def recover(self, since: float) -> float:
        """Send a probe (a new session's first message); the time from ``since`` to the last
        notice of its chain."""
        model = Model()
        payload = text("help", 1)
        session = f"probe:{next(_probes)}"
        plan = Plan(session, [payload], [f"{session}/1/{secrets.token_hex(5)}"],
                    [model.message(payload)], [])
        plan.final = model.frames()
        self.probes.append(plan)
        await self.front.send(session, plan.ids[0], payload, 1)
        if not await self.front.wait(session, plan.ids[0], len(plan.expected[0]),
                                     CHAIN_TIMEOUT):
            raise AssertionError(f"probe {session} did not complete in {CHAIN_TIMEOUT} s")
        took = time.monotonic() - since
        self.recoveries.append(took)
        self.note(f"recovered in {took:.1f} s")
        return took

    def router_node(self, index: int = 0) -> str:
        """The RabbitMQ node router ``index`` is connected to now (by what it logged)."""
        proc = self.cluster.slots[index].proc
        assert proc is not None
        ports = re.findall(r"event=broker_(?:re)?connected url=\S+?:(\d+)/", peek(proc))
        assert ports, f"router {index} logged no connection"
        return nodes.node_of_port(int(ports[-1]))


Left = dict[str, tuple[int, int, int]]
"""Queue -> (ready, unacknowledged, consumers), for the queues that hold a message."""


async def drained(namespace: str, timeout: float) -> Left:
    """Wait until no queue of the namespace but NS.dead holds a message; what is left (a
    dead letter is always left: nothing should be dead-lettered)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            queues = await nodes.queue_info(namespace)
        except AssertionError:
            queues = []
        counts = {str(q["name"]): (int(str(q["messages_ready"] or 0)),
                                   int(str(q["messages_unacknowledged"] or 0)),
                                   int(str(q["consumers"] or 0)))
                  for q in queues}
        left = {q: c for q, c in counts.items() if c[0] or c[1]}
        if (queues and all(q.endswith(".dead") for q in left)) \
                or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)


async def under_load(harness: ClusterHarness, capsys: pytest.CaptureFixture[str], name: str,
                     faults: Callable[[Run], Awaitable[dict[str, Any]]],
                     before: Callable[[ClusterHarness], Awaitable[Any]] | None = None,
                     *, partitions: int = 0) -> Figures:
    """Run the load with ``faults`` alongside; check; print the summary line; assert.
    ``partitions``: the routers' and the frontend's ``--partitions``."""
    seed = int(os.environ.get("CLUSTER_SEED") or secrets.randbits(32))
    rng = random.Random(seed)
    plans, _ = make_plans(SESSIONS, MESSAGES, rng)
    harness.queues.update(q.name for q in partition_queues(harness.ns, partitions))
    cluster = standard_cluster(harness, routers=2, turn_timeout=2, max_attempts=10,
                               **({"partitions": partitions} if partitions else {}))
    await cluster.start(timeout=90)
    front = Frontend(harness, name=f"cluster-{name}", partitions=partitions)
    await front.start()
    # Every shared queue, and the frontend's generated reply queue (the SDK Client declares
    # it with the broker's queue type), has a member on each of the three nodes.
    members = {str(q["name"]): sorted(map(str, q["members"]))  # type: ignore[call-overload]
               for q in await nodes.queue_info(harness.ns)
               if str(q["name"]).endswith((".ingress", ".replies"))
               or q["name"] == front.client.reply_queue}
    assert len(members) == 3, members
    assert all(m == sorted(nodes.RABBIT_NODES) for m in members.values()), members
    prepared = None if before is None else await before(harness)
    run = Run(harness, cluster, front, time.monotonic(), before=prepared)
    load = asyncio.create_task(drive(front, plans, rng, spread=SPREAD, think=THINK,
                                     chain_timeout=CHAIN_TIMEOUT))
    try:
        extra = await faults(run)
        await load
        load_s = time.monotonic() - run.t0
        await nodes.start()  # every node back before the final checks
        await nodes.wait_healed()  # and one cluster (a split would fail the next test)
        await cluster.wait_consumers(60)
        left = await drained(harness.ns, 60)
        everything = [*plans, *run.probes]
        stacks = await read_stacks(harness, everything)
        await asyncio.sleep(1.0)  # a late copy or a second run of a chain would show now
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
    stats = await cluster.stop()
    # Every process stopped: what they held is back in its queue; nothing should be.
    after_stop = {q: c for q, c in (await drained(harness.ns, 0)).items()
                  if q != front.client.reply_queue}
    await front.close()
    figures = Figures()
    check(everything, front, stacks, figures)
    figures.extra = {
        **extra,
        "recover_s": "/".join(f"{r:.1f}" for r in run.recoveries),
        "notice_copies": front.copies, "publish_retries": front.publish_retries,
        "chain_timeouts": front.chain_timeouts, "redispatches": cluster.redispatches(),
        **{k: stats.get(k, 0)
           for k in ("replies_dropped", "leftover_waits", "cas_retries", "handovers")},
        "unexpected_exits": len(cluster.unexpected), "undrained": len(left),
        "left_after_stop": len(after_stop), "load_s": round(load_s, 1), "seed": seed,
    }
    with capsys.disabled():
        print(f"\n{name}: {figures.line()}", flush=True)
    report = "\n".join([*run.journal, *figures.problems[:40], *cluster.unexpected,
                        f"not drained (ready, unacknowledged, consumers): {left}",
                        f"left after stop: {after_stop}"])
    assert figures.bad == 0, report
    assert not left and not after_stop, report
    assert not cluster.unexpected, report
    return figures
