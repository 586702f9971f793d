"""Losing RabbitMQ cluster nodes under load (kill -9, then a restart, twice): nothing lost,
duplicated, reordered or corrupted, and the time to recover.

Two routers (``--turn-timeout 2 --max-attempts 10``) and four worker processes, all given
the three RabbitMQ nodes' URLs and the Redis Cluster's six, carry the chaos flow for
60 sessions of 8 messages while the nodes are hurt. Only the local clusters' nodes are
touched (``scripts/cluster``); the shared servers never are.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from . import nodes
from .conftest import ClusterHarness
from .run import Run, under_load

pytestmark = [pytest.mark.infra, pytest.mark.disruptive, pytest.mark.cluster,
              pytest.mark.timeout(300)]

async def kill_rabbit_twice(run: Run, pick: str) -> dict[str, Any]:
    """Twice: kill -9 a RabbitMQ node (the leader of NS.ingress, or router 0's node), probe
    until the flow recovers, restart the node."""
    restarts = []
    for round_, when in enumerate((4.0, 22.0)):
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
    return {"node_kills": 2, "restart_s": "/".join(f"{r:.0f}" for r in restarts)}


async def test_kill_the_ingress_leader_twice(clustered: ClusterHarness,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    await under_load(clustered, capsys, "rabbit-leader-kill",
                     lambda run: kill_rabbit_twice(run, "leader"),
                     before=lambda h: nodes.leader_of(h.ingress))


async def test_kill_the_routers_node_twice(clustered: ClusterHarness,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    await under_load(clustered, capsys, "rabbit-router-node-kill",
                     lambda run: kill_rabbit_twice(run, "router"))
