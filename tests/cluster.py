"""A throwaway Redis Cluster on loopback: N masters, no replicas, nothing saved to disk.

Needs only the ``redis-server`` and ``redis-cli`` programs::

    with LocalCluster() as cluster:
        store = RedisStore(cluster.url, "ns")
"""

from __future__ import annotations

import contextlib
import logging
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

BUS_OFFSET = 10_000
"""Redis Cluster talks between nodes on the client port plus this; it must be free too."""

PORT_RANGE = (7100, 7999)
START_TIMEOUT = 30.0


class ClusterStartError(RuntimeError):
    """The local cluster did not come up."""


def _free(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` ports whose cluster bus ports are free as well (starting at a random one, so
    test runs that go on at the same time rarely collide)."""
    low, high = PORT_RANGE
    start = random.randint(low, high)
    found: list[int] = []
    for offset in range(high - low + 1):
        port = low + (start - low + offset) % (high - low + 1)
        if _free(port, host) and _free(port + BUS_OFFSET, host):
            found.append(port)
            if len(found) == count:
                return found
    raise ClusterStartError(f"no {count} free ports in {low}-{high} on {host}")


def _cli(port: int, host: str, *args: str, timeout: float = 10.0) -> str:
    done = subprocess.run(["redis-cli", "-h", host, "-p", str(port), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    return done.stdout + done.stderr


class LocalCluster:
    """Start with :meth:`start` (or ``with``); :meth:`stop` kills the nodes and deletes files."""

    def __init__(self, masters: int = 3, host: str = "127.0.0.1") -> None:
        self.masters = masters
        self.host = host
        self.ports: list[int] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir: Path | None = None

    @property
    def url(self) -> str:
        """The store URL: every node as a seed."""
        return "redis+cluster://" + ",".join(f"{self.host}:{p}" for p in self.ports) + "/0"

    def start(self, attempts: int = 3) -> None:
        """Start the nodes, join them into one cluster, wait until every node says ok."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
                return
            except ClusterStartError as error:
                self.stop()
                if attempt == attempts:
                    raise
                # Most likely a port taken between probing and binding: try other ports.
                log.warning("local Redis Cluster, attempt %d: %s", attempt, error)
            except BaseException:
                self.stop()
                raise

    def _start_once(self) -> None:
        for program in ("redis-server", "redis-cli"):
            if shutil.which(program) is None:
                raise FileNotFoundError(f"{program} is not installed (needed for the cluster)")
        self._dir = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        self.ports = free_ports(self.masters, self.host)
        for port in self.ports:
            log_file = open(self._dir / f"{port}.log", "wb")  # noqa: SIM115 (child's output)
            with log_file:
                self._procs.append(subprocess.Popen(
                    ["redis-server", "--port", str(port), "--bind", self.host,
                     "--cluster-enabled", "yes",
                     "--cluster-config-file", str(self._dir / f"nodes-{port}.conf"),
                     "--cluster-node-timeout", "5000",
                     "--dir", str(self._dir), "--save", "", "--appendonly", "no",
                     "--daemonize", "no"],
                    stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports:
            self._wait(deadline, port, lambda out: out.strip() == "PONG", "PING")
        created = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"{self.host}:{port}" for port in self.ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=START_TIMEOUT, check=False)
        if created.returncode != 0:
            raise ClusterStartError(f"redis-cli --cluster create failed: "
                                    f"{(created.stdout + created.stderr).strip()[-500:]}")
        for port in self.ports:
            self._wait(deadline, port, self._ready, "CLUSTER", "INFO")

    def _ready(self, info: str) -> bool:
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        return (fields.get("cluster_state") == "ok"
                and fields.get("cluster_slots_ok") == "16384"
                and fields.get("cluster_known_nodes") == str(self.masters))

    def _wait(self, deadline: float, port: int, good: Callable[[str], bool],
              *command: str) -> None:
        out = ""
        while time.monotonic() < deadline:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise ClusterStartError(f"redis-server exited with {proc.returncode}: "
                                            f"{self._log_tail(proc)}")
            out = _cli(port, self.host, *command)
            if good(out):
                return
            time.sleep(0.05)
        raise ClusterStartError(f"node {port} not ready: {' '.join(command)} -> {out!r}")

    def _log_tail(self, proc: subprocess.Popen[bytes]) -> str:
        port = proc.args[2] if isinstance(proc.args, list) else "?"
        if self._dir is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._dir / f"{port}.log").read_text(errors="replace").strip()[-300:]
        return ""

    def stop(self) -> None:
        """Stop every node and delete the temporary directory."""
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
