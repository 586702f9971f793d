"""An acknowledged commit lost in a Redis failover, shown, and closed by ``wait_replicas``.

Redis replication is asynchronous: a master acknowledges a write before its replica has it.
Here the replica of a session's slot is frozen (SIGSTOP) and its replication link cut while
the session's second message runs, so that the master alone holds its commit; then the
master is killed and the replica resumed and promoted. Without the option, the second
message's chain completes (its notices are delivered, its delivery acknowledged) and its
commit is then lost: the third message runs on the state before the second (a turn lost: its
count shows it), and the second message's id is forgotten, so a re-send runs it again (a
turn applied twice). With ``wait_replicas=1`` the commit is not acknowledged before a
replica has it, so the second message completes only on the promoted replica, once.
"""

from __future__ import annotations

import logging
import signal
import time

import pytest

from tests.chaos.flow import SERVICES, Model, text
from tests.chaos.load import Cluster, Frontend

from . import nodes
from .conftest import ClusterHarness

pytestmark = [pytest.mark.infra, pytest.mark.disruptive, pytest.mark.cluster,
              pytest.mark.timeout(420)]

log = logging.getLogger(__name__)


async def _scenario(h: ClusterHarness, wait: bool) -> tuple[list[list[str]], list[list[str]]]:
    """Send three messages (and re-send the second) around the failover; return what arrived
    for each and what the model predicts."""
    if wait:
        h.redis_url = nodes.REDIS_URL + "?wait_replicas=1&wait_timeout=500"
    cluster = Cluster(h, {"turn_timeout": 2, "max_attempts": 10})
    cluster.add_router()
    cluster.add_worker(SERVICES)
    await cluster.start(timeout=90)
    log.info("processes up")
    front = Frontend(h, name="redis-failover")
    await front.start()
    session = f"tg:failover-{h.ns}"
    model = Model()
    payloads = [text("help", k) for k in (1, 2, 3)]
    expected = [model.message(p) for p in payloads]
    ids = [f"{session}/{k}" for k in (1, 2, 3)]
    master, replica = await nodes.master_and_replica(h.store.session_keys(session)[0])

    async def send(k: int, timeout: float = 60.0, msg_id: str | None = None) -> bool:
        mid = msg_id or ids[k]
        await front.send(session, mid, payloads[k], k + 1)
        return await front.wait(session, mid, len(expected[k]), timeout)

    try:
        assert await send(0)
        log.info("message 1 done; freezing replica %s of master %s", replica.port,
                 master.port)
        replica_pid = nodes.redis_pid(replica.port)
        nodes.signal_pid(replica_pid, signal.SIGSTOP)
        try:
            # The frozen replica's kernel would still take the replication stream into its
            # socket buffer: cut the link, so that only the master gets what follows.
            await nodes.run("redis-cli", "-p", str(master.port), "client", "kill", "type",
                            "replica", timeout=10)
            # Without the option the chain completes from the master alone; with it, the
            # commit waits for the frozen replica and the chain cannot complete yet.
            done = await send(1, timeout=6.0)
            assert done is not wait, ("completed" if done else "stalled") + \
                " while the replica was frozen"
            log.info("message 2 %s; killing master %s", done, master.port)
            nodes.signal_pid(nodes.redis_pid(master.port), signal.SIGKILL)
        finally:
            nodes.signal_pid(replica_pid, signal.SIGCONT)
        log.info("promoted after %.1f s", await nodes.wait_promoted(replica.port))
        await nodes.start()  # the old master comes back as the new master's replica
        log.info("old master restarted")
        if wait:
            assert await front.wait(session, ids[1], len(expected[1]), 60), \
                "the second message did not complete after the failover"
        started = time.monotonic()
        assert await send(2), "the third message did not complete"
        # A frontend that did not see the confirm re-sends with the same id and seq.
        await front.send(session, ids[1], payloads[1], 2)
        await front.wait(session, ids[1], 2 * len(expected[1]), 5.0)
        assert time.monotonic() - started < 120
    finally:
        await cluster.stop()
        await front.close()
    got = [[f"{t}:{p}" for t, p in ((n.type, n.payload) for n in front.by_message[i])]
           for i in ids]
    want = [[f"{t}:{p}" for t, p in exp] for exp in expected]
    return got, want


async def test_without_wait_a_failover_loses_an_acknowledged_turn(
        clustered: ClusterHarness, capsys: pytest.CaptureFixture[str]) -> None:
    got, want = await _scenario(clustered, wait=False)
    with capsys.disabled():
        print(f"\nredis-failover without wait_replicas: got {got}, model {want}", flush=True)
    # The second turn's notices arrived, yet its effect is gone: the third message sees the
    # count of the first, and the re-sent second message runs a second time.
    assert got[1][:len(want[1])] == want[1]
    assert got[2] != want[2] and got[2] == [want[2][0].replace("n3", "n2")]
    assert len(got[1]) == 2 * len(want[1])


async def test_with_wait_replicas_no_acknowledged_turn_is_lost(
        clustered: ClusterHarness, capsys: pytest.CaptureFixture[str]) -> None:
    got, want = await _scenario(clustered, wait=True)
    with capsys.disabled():
        print(f"\nredis-failover with wait_replicas=1: got {got}, model {want}", flush=True)
    assert got == want


async def test_a_waiting_commit_can_be_a_new_clients_first_command(local_clusters: None,
                                                                   namespace: str) -> None:
    from router.redis_store import RedisStore

    store = RedisStore(nodes.REDIS_URL + "?wait_replicas=1", namespace)
    try:
        assert await store.commit("s", 0, b"x", expire_at_ms=int(time.time() * 1000) + 60_000)
        assert (await store.load("s")).version == 1
    finally:
        await store.delete_namespace()
        await store.close()
