"""The nodes of the local clusters of ``scripts/cluster``: where they are, which one leads or
holds what, and the faults the node-loss tests inflict on them (kill -9, SIGSTOP/SIGCONT,
restart). Only the script's own nodes are ever touched: each pid is checked to be the named
node's process before a signal is sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.procs import REPO

SCRIPT = REPO / "scripts" / "cluster"
DIR = Path(os.environ.get("CLOUDBUNCH_CLUSTER_DIR", "/tmp/cloudbunch-cluster"))
RABBIT_NODES = {f"rabbit{n}@localhost": 5680 + n for n in (2, 3, 4)}
"""Node name -> AMQP port."""
REDIS_PORTS = (6401, 6402, 6403, 6404, 6405, 6406)
RABBITMQ_HOME = "/var/lib/rabbitmq"
RMQCTL = ["runuser", "-u", "rabbitmq", "--", "env", f"HOME={RABBITMQ_HOME}",
          "/usr/lib/rabbitmq/bin/rabbitmqctl", "-q"]
"""rabbitmqctl as the 'rabbitmq' user (the nodes' Erlang cookie). It runs in that user's home:
started in a folder the user cannot read (a clone under /root), the Erlang VM writes its
code loader's errors (``eacces``, ``=ERROR REPORT====``) to stdout before the JSON."""

AMQP_URLS = ",".join(f"amqp://guest:guest@127.0.0.1:{port}/" for port in RABBIT_NODES.values())
REDIS_URL = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in REDIS_PORTS) + "/0"


async def run(*argv: str, timeout: float = 180.0, cwd: str | None = None) -> str:
    """Run a command; its stdout, or AssertionError with its output if it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{' '.join(argv)} did not finish in {timeout} s") from None
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: "
                             f"{(out + err).decode(errors='replace')[-2000:]}")
    return out.decode(errors="replace")


async def start() -> None:
    """Start every node that is not running (a killed node comes back with its data)."""
    await run(str(SCRIPT), "start")


def _pid(pidfile: Path, marker: str, where: str = "cmdline") -> int:
    """The pid in ``pidfile``, checked to be the right process: ``marker`` in its command
    line (Redis) or environment (a RabbitMQ node's name is in RABBITMQ_NODENAME)."""
    pid = int(pidfile.read_text().strip())
    text = Path(f"/proc/{pid}/{where}").read_bytes().replace(b"\0", b"\n").decode(
        errors="replace")
    if marker not in text.splitlines() and marker not in text.replace("\n", " "):
        raise AssertionError(f"pid {pid} from {pidfile} is not {marker}")
    return pid


def rabbit_pid(node: str) -> int:
    assert node in RABBIT_NODES, node  # never the main node
    return _pid(DIR / node.split("@")[0] / "pid", f"RABBITMQ_NODENAME={node}", "environ")


def redis_pid(port: int) -> int:
    assert port in REDIS_PORTS, port
    return _pid(DIR / f"redis{port}" / "pid", f":{port}")


def signal_pid(pid: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)


async def wait_gone(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        status = Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() \
            else ""
        if "State:\tZ" in status or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.05)


async def rabbitmqctl(*args: str, nodes: list[str] | None = None) -> str:
    """rabbitmqctl against the first of ``nodes`` (default: every cluster node) that answers."""
    last: AssertionError | None = None
    for node in nodes or list(RABBIT_NODES):
        try:
            # The CLI starts an Erlang VM per call: slow on a busy machine.
            return await run(*RMQCTL, "-n", node, *args, timeout=120, cwd=RABBITMQ_HOME)
        except AssertionError as error:
            last = error
    raise AssertionError(f"no cluster node answered rabbitmqctl {' '.join(args)}: {last}")


def json_rows(out: str) -> list[dict[str, object]]:
    """The rows of ``rabbitmqctl --formatter json`` output: the JSON array, from the line that
    opens it (anything the Erlang VM printed before it, such as an error report, is skipped)."""
    lines = out.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("[")), None)
    if start is None:
        if not out.strip():
            return []
        raise AssertionError(f"rabbitmqctl printed no JSON array: {out[-2000:]}")
    try:
        rows = json.loads("\n".join(lines[start:]))
    except json.JSONDecodeError as error:
        raise AssertionError(f"rabbitmqctl printed unreadable JSON ({error}): "
                             f"{out[-2000:]}") from None
    assert isinstance(rows, list), out[-2000:]
    return rows


async def queue_info(namespace: str, up: list[str] | None = None) -> list[dict[str, object]]:
    out = await rabbitmqctl("list_queues", "name", "leader", "members", "messages_ready",
                            "messages_unacknowledged", "consumers", "--formatter", "json",
                            nodes=up)
    return [q for q in json_rows(out) if str(q["name"]).startswith(namespace + ".")]


async def leader_of(queue: str, up: list[str] | None = None) -> str:
    out = await rabbitmqctl("list_queues", "name", "leader", "--formatter", "json", nodes=up)
    for q in json_rows(out):
        if q["name"] == queue:
            return str(q["leader"])
    raise AssertionError(f"queue {queue} not found")


async def wait_healed(timeout: float = 150.0) -> float:
    """Wait until every RabbitMQ node runs, sees the three and reports no partition (autoheal
    restarts the losing side of a split); return how long that took."""
    started = time.monotonic()
    while True:
        healthy = True
        for node in RABBIT_NODES:
            try:
                out = await run(*RMQCTL, "-n", node, "cluster_status", "--formatter", "json",
                                timeout=60, cwd=RABBITMQ_HOME)
                start = out.find("{")
                status = json.loads(out[start:]) if start >= 0 else {}
            except (AssertionError, json.JSONDecodeError):
                status = {}
            if sorted(status.get("running_nodes") or []) != sorted(RABBIT_NODES) \
                    or status.get("partitions"):
                healthy = False
                break
        if healthy:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"the RabbitMQ cluster did not heal within {timeout} s: "
                                 f"{status}")
        await asyncio.sleep(1.0)


def node_of_port(port: int) -> str:
    for node, p in RABBIT_NODES.items():
        if p == port:
            return node
    raise AssertionError(f"no cluster node on port {port}")


@dataclass
class RedisNode:
    port: int
    node_id: str
    role: str
    master_id: str
    slots: list[tuple[int, int]]


async def redis_nodes(up: int | None = None) -> list[RedisNode]:
    """CLUSTER NODES as seen from the first node that answers."""
    for port in ([up] if up else list(REDIS_PORTS)):
        try:
            out = await run("redis-cli", "-p", str(port), "cluster", "nodes", timeout=10)
        except AssertionError:
            continue
        if not out.strip() or "ERR" in out[:10]:
            continue
        nodes = []
        for line in out.strip().splitlines():
            parts = line.split()
            flags = parts[2].split(",")
            node_port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            role = "master" if "master" in flags else "replica"
            if "fail" in flags or "fail?" in flags:
                role += "-failed"
            slots = []
            for s in parts[8:]:
                if s.startswith("["):
                    continue
                a, _, b = s.partition("-")
                slots.append((int(a), int(b or a)))
            nodes.append(RedisNode(node_port, parts[0], role, parts[3], slots))
        return nodes
    raise AssertionError("no Redis Cluster node answered")


async def keyslot(key: str) -> int:
    return int((await run("redis-cli", "-p", str(REDIS_PORTS[0]), "cluster", "keyslot", key,
                          timeout=10)).strip())


async def master_and_replica(key: str) -> tuple[RedisNode, RedisNode]:
    """The master that holds ``key``'s slot and its (first) replica."""
    slot = await keyslot(key)
    nodes = await redis_nodes()
    master = next(n for n in nodes if n.role == "master"
                  and any(a <= slot <= b for a, b in n.slots))
    replica = next(n for n in nodes if n.role == "replica" and n.master_id == master.node_id)
    return master, replica


async def wait_promoted(port: int, timeout: float = 30.0) -> float:
    """Wait until the node on ``port`` says it is a master; return how long that took."""
    started = time.monotonic()
    while True:
        try:
            role = await run("redis-cli", "-p", str(port), "role", timeout=5)
            if role.splitlines()[0].strip() == "master":
                return time.monotonic() - started
        except AssertionError:
            pass
        if time.monotonic() - started > timeout:
            raise AssertionError(f"Redis node {port} not promoted within {timeout} s")
        await asyncio.sleep(0.1)


async def wait_redis_ok(timeout: float = 60.0) -> None:
    """Wait until every Redis node that runs says cluster_state:ok and has 6 known nodes."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for port in REDIS_PORTS:
            try:
                states.append(await run("redis-cli", "-p", str(port), "cluster", "info",
                                        timeout=5))
            except AssertionError:
                states.append("")
        if all("cluster_state:ok" in s for s in states if s):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Redis Cluster not ok within {timeout} s")
        await asyncio.sleep(0.2)
