"""Losing cluster nodes under load: RabbitMQ nodes killed (-9) and restarted, a RabbitMQ node
frozen (SIGSTOP), a Redis master killed; nothing lost, duplicated, reordered or corrupted,
and the time to recover.

Two routers (``--turn-timeout 2 --max-attempts 10``) and four worker processes, all given
the three RabbitMQ nodes' URLs and the Redis Cluster's six, carry the chaos flow
(``CLUSTER_SESSIONS`` sessions of ``CLUSTER_MESSAGES`` messages, 40 of 6 by default) while
the nodes are hurt. ``CLUSTER_KILLS`` (default 1) is how many times each RabbitMQ kill run
kills a node (and restarts it). Only the local clusters' nodes are
touched (``scripts/cluster``); the shared servers never are.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from . import nodes
from .conftest import ClusterHarness
from .run import Run, under_load

pytestmark = [pytest.mark.infra, pytest.mark.disruptive, pytest.mark.cluster,
              pytest.mark.timeout(300)]

KILLS = int(os.environ.get("CLUSTER_KILLS", "1"))
FREEZE_S = 28.0
"""Longer than a party needs to notice a frozen node (21 to 24 s with the 6 s heartbeat)."""


async def kill_rabbit(run: Run, pick: str) -> dict[str, Any]:
    """``KILLS`` times: kill -9 a RabbitMQ node (the leader of NS.ingress, or router 0's
    node), probe until the flow recovers, restart the node."""
    restarts = []
    for round_, when in enumerate([4.0 + 18.0 * k for k in range(KILLS)]):
        if pick == "leader" and round_ == 0:
            node = str(run.before)  # rabbitmqctl is slow here: asked before the load
        elif pick == "leader":
            node = await nodes.leader_of(run.harness.ingress)
        else:
            node = ""
        await run.at(when)
        if pick != "leader":
            node = run.router_node(0)
        pid = nodes.rabbit_pid(node)
        nodes.signal_pid(pid, signal.SIGKILL)
        killed = time.monotonic()
        run.note(f"kill -9 {node} (pid {pid})")
        await nodes.wait_gone(pid)
        await run.recover(killed)
        if pick == "leader":
            others = [n for n in nodes.RABBIT_NODES if n != node]
            new = await nodes.leader_of(run.harness.ingress, others)
            assert new != node
            run.note(f"{run.harness.ingress} now led by {new}")
        started = time.monotonic()
        await nodes.start()
        restarts.append(time.monotonic() - started)
        run.note(f"{node} restarted in {restarts[-1]:.1f} s")
    return {"node_kills": KILLS, "restart_s": "/".join(f"{r:.0f}" for r in restarts)}


async def test_kill_the_ingress_leader(clustered: ClusterHarness,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    await under_load(clustered, capsys, "rabbit-leader-kill",
                     lambda run: kill_rabbit(run, "leader"),
                     before=lambda h: nodes.leader_of(h.ingress))


async def test_kill_the_routers_node(clustered: ClusterHarness,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    await under_load(clustered, capsys, "rabbit-router-node-kill",
                     lambda run: kill_rabbit(run, "router"))


async def test_kill_the_routers_node_partitioned(clustered: ClusterHarness,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """With ``--partitions 3`` (docs/scaling.md): the partitions' single active consumers on
    the lost node pass to the other router, nothing lost."""
    await under_load(clustered, capsys, "rabbit-router-node-kill-partitioned",
                     lambda run: kill_rabbit(run, "router"), partitions=3)


async def test_freeze_the_routers_node(clustered: ClusterHarness,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    async def freeze(run: Run) -> dict[str, Any]:
        await run.at(4.0)
        node = run.router_node(0)
        pid = nodes.rabbit_pid(node)
        nodes.signal_pid(pid, signal.SIGSTOP)
        frozen = time.monotonic()
        run.note(f"SIGSTOP {node} for {FREEZE_S:.0f} s")
        try:
            await run.recover(frozen)
            await asyncio.sleep(max(0.0, frozen + FREEZE_S - time.monotonic()))
        finally:
            nodes.signal_pid(pid, signal.SIGCONT)
        run.note(f"SIGCONT {node}")
        # The others declared it down: its return splits the cluster's metadata, which
        # autoheal mends by restarting the losing side (scripts/cluster).
        healed = await nodes.wait_healed()
        run.note(f"cluster healed {healed:.1f} s after SIGCONT")
        return {"freezes": 1, "freeze_s": FREEZE_S, "healed_s": round(healed, 1)}

    await under_load(clustered, capsys, "rabbit-freeze", freeze)


async def test_kill_a_redis_master(clustered: ClusterHarness,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    # The safe configuration (see test_redis_failover): commits wait for a replica.
    clustered.redis_url = nodes.REDIS_URL + "?wait_replicas=1&wait_timeout=1000"

    async def kill_master(run: Run) -> dict[str, Any]:
        await run.at(6.0)
        masters = [n for n in await nodes.redis_nodes() if n.role == "master"]
        master = masters[0]
        replica = next(n for n in await nodes.redis_nodes()
                       if n.role == "replica" and n.master_id == master.node_id)
        pid = nodes.redis_pid(master.port)
        nodes.signal_pid(pid, signal.SIGKILL)
        killed = time.monotonic()
        run.note(f"kill -9 Redis master {master.port} (replica {replica.port})")
        promoted = await nodes.wait_promoted(replica.port)
        run.note(f"replica {replica.port} promoted after {promoted:.1f} s")
        # Its slots have no replica until the old master comes back as one.
        await nodes.start()
        run.note(f"{master.port} restarted")
        await run.recover(killed)
        return {"redis_master_kills": 1, "promoted_s": round(promoted, 1)}

    await under_load(clustered, capsys, "redis-master-kill", kill_master)
