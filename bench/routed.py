"""CloudBunch end to end: a router process, a worker process, and worker_sdk.Client here."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router.core import Frame, Record
from router.partitions import partition_queues
from router.redis_store import RedisStore
from worker_sdk import wire
from worker_sdk.amqp import AmqpBroker
from worker_sdk.client import Client

from .procs import Proc
from .services import PAYLOAD, state

log = logging.getLogger(__name__)

SERVICE = "bench"
SESSION_TTL_S = 3600
"""Every key the bench's router writes expires within an hour, even if cleanup never runs."""


def loop_of(pid: int) -> str:
    """``uvloop`` if the process has uvloop's extension mapped, else ``asyncio``."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    return "uvloop" if "uvloop/loop" in maps else "asyncio"


class Routed:
    """The routed deployment of one bench run and a client that measures round trips."""

    def __init__(self, namespace: str, amqp_url: str, redis_url: str, queue_type: str,
                 *, prefetch: int, history: int | None = None,
                 relay: str = "router", process_args: Sequence[str] = (),
                 routers: int = 1, partitions: int = 0,
                 router_envs: Sequence[dict[str, str] | None] = ()) -> None:
        self.ns = namespace
        self.routers_wanted = routers
        """Router replicas to start (the first is ``router``, all are in ``routers``)."""
        self.partitions = partitions
        """The routers' and the client's ``--partitions`` (0: the shared queues)."""
        self.router_envs = list(router_envs)
        """Per router, the environment it runs in (None: the default; see bench.duel)."""
        self.routers: list[Proc] = []
        self.process_args = list(process_args)
        """Extra options of the router and worker processes (--metrics-port 0, ...)."""
        self.amqp_url = amqp_url
        self.redis_url = redis_url
        self.queue_type = queue_type
        self.prefetch = prefetch
        self.history = history
        self.relay = relay
        """``router``, or ``forwarder``: the stateless ceiling of bench.forwarder."""
        self.router: Proc | None = None
        self.worker: Proc | None = None
        self.broker = AmqpBroker(amqp_url, queue_type, name="bench-client")
        self.client: Client | None = None
        self.store = RedisStore(redis_url, namespace)
        self._waiting: dict[str, asyncio.Future[wire.Notice]] = {}
        self._early: dict[str, wire.Notice] = {}
        self._collector: asyncio.Task[None] | None = None
        self.service_queue = wire.service_queue(namespace, SERVICE)
        self.outputs: dict[str, str] = {}
        """The last output of each process, kept when it stops."""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.broker.connect()
        await self.store.ping()
        common = ["--namespace", self.ns, "--queue-type", self.queue_type,
                  "--amqp-url", self.amqp_url]
        self.worker = await Proc.python(
            "worker", "-m", "router.cli", "worker", "bench.services:bench", *common,
            "--prefetch", str(self.prefetch), *self.process_args)
        if self.relay == "forwarder":
            # The worker runs on uvloop when it is installed: so does the forwarder.
            uvloop = ["--uvloop"] if importlib.util.find_spec("uvloop") else []
            self.router = await Proc.python(
                "forwarder", "-m", "bench.forwarder", *common, "--service", SERVICE,
                "--prefetch", "64", *uvloop)
        else:
            for i in range(self.routers_wanted):
                proc = await Proc.python(
                    "router" if i == 0 else f"router{i + 1}", "-m", "router.cli", "router",
                    *common, "--redis-url", self.redis_url, "--root", SERVICE,
                    "--session-ttl", str(SESSION_TTL_S), "--partitions", str(self.partitions),
                    *(() if self.history is None else ("--history", str(self.history))),
                    *self.process_args,
                    env=self.router_envs[i] if i < len(self.router_envs) else None)
                self.routers.append(proc)
            self.router = self.routers[0]
        names = wire.queue_names(self.ns)
        for proc in self.routers or [self.router]:
            await self._ready(proc, names["replies"])
            await self._started(proc)
        await self._ready(self.worker, self.service_queue)
        self.client = Client(self.broker, self.ns, partitions=self.partitions)
        await self.client.start()
        self._collector = asyncio.create_task(self._collect(), name="bench-notices")

    async def _ready(self, proc: Proc, queue: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while await self.broker.consumer_count(queue) < 1:
            proc.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name} not consuming {queue} after {timeout} s:\n"
                                   f"{proc.output(4000)}")
            await asyncio.sleep(0.05)

    async def _started(self, proc: Proc, timeout: float = 30.0) -> None:
        """Wait until a router consumes all its queues (the partitions' come last)."""
        deadline = time.monotonic() + timeout
        while self.partitions and "event=router_started" not in proc.output():
            proc.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name} not started after {timeout} s:\n"
                                   f"{proc.output(4000)}")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Stop the processes, delete every queue and key of the namespace."""
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(BaseException):
                await self._collector
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 10)
        procs = [p for p in (self.worker, *(self.routers or [self.router])) if p is not None]
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)
        for proc in procs:
            self.outputs[proc.name] = proc.output(4000)
            proc.close()
        names = wire.queue_names(self.ns)
        partitioned = [q.name for q in partition_queues(self.ns, self.partitions)]
        for queue in (*names.values(), *partitioned, self.service_queue):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.broker.delete(queue), 10)
        for exchange in wire.exchange_names(self.ns).values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.broker.delete_exchange(exchange), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broker.close(), 10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.delete_namespace(), 120)
        with contextlib.suppress(Exception):
            await self.store.close()

    # ------------------------------------------------------------------ round trips

    async def _collect(self) -> None:
        assert self.client is not None
        async for notice in self.client.notices():
            future = self._waiting.pop(notice.in_reply_to, None)
            if future is None:
                self._early[notice.in_reply_to] = notice
            elif not future.done():
                future.set_result(notice)

    async def ask(self, session: str, payload: Any, timeout: float = 60.0) -> wire.Notice:
        """Send one message and return the first notice of its chain."""
        assert self.client is not None
        msg_id = await self.client.send(session, payload)
        early = self._early.pop(msg_id, None)
        if early is not None:
            return early
        future: asyncio.Future[wire.Notice] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        try:
            notice = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._check()
            raise TimeoutError(f"no notice for a message to {session!r} in {timeout} s") \
                from None
        finally:
            self._waiting.pop(msg_id, None)
        if notice.type != "output":
            raise RuntimeError(f"session {session!r} answered {notice.type}: {notice!r}")
        return notice

    async def turn(self, session: str) -> None:
        """One measured turn: a message answered by ``reply`` with a new state."""
        await self.ask(session, PAYLOAD)

    async def build(self, session: str, depth: int) -> None:
        """Start a session whose stack holds ``depth`` frames (one client message)."""
        await self.ask(session, {"depth": depth})

    def _check(self) -> None:
        for proc in (*(self.routers or [self.router]), self.worker):
            if proc is not None:
                proc.check_alive()

    async def depth_of(self, session: str) -> int:
        snap = await self.store.load(session)
        return len(Record.decode(snap.record).stack) if snap.record is not None else 0

    # ------------------------------------------------------------------ idle sessions

    def synthetic_record(self, session: str, now_ms: int) -> bytes:
        """The record the router leaves after one answered message to a new session."""
        return Record(session, stack=[Frame(SERVICE, state(0))], last_seq=1,
                      activity_ms=now_ms).encode()

    async def write_sessions(self, sessions: list[str], concurrency: int = 64) -> float:
        """Write idle sessions through RedisStore.commit as the router would; return seconds."""
        began = time.monotonic()
        now_ms = int(time.time() * 1000)
        expire = now_ms + SESSION_TTL_S * 1000
        gate = asyncio.Semaphore(concurrency)

        async def one(session: str) -> None:
            async with gate:
                applied = await self.store.commit(
                    session, 0, self.synthetic_record(session, now_ms),
                    remember=secrets.token_urlsafe(16), expire_at_ms=expire)
                if not applied:
                    raise RuntimeError(f"session {session!r} already existed")

        for i in range(0, len(sessions), 5000):
            await asyncio.gather(*(one(s) for s in sessions[i:i + 5000]))
        return time.monotonic() - began

    async def session_bytes(self, session: str) -> int:
        """MEMORY USAGE summed over the session's keys (record, outbox, dedup, history)."""
        total = 0
        redis = self.store._redis  # the bench reads what the adapter wrote
        for key in self.store.session_keys(session):
            total += int(await redis.memory_usage(key, samples=0) or 0)
        return total

    async def used_memory(self) -> int:
        info = await self.store._redis.info("memory")
        return int(info["used_memory"])

    async def redis_info(self) -> dict[str, Any]:
        redis = self.store._redis
        server = await redis.info("server")
        out: dict[str, Any] = {"redis_version": server.get("redis_version")}
        for name in ("appendonly", "appendfsync"):
            with contextlib.suppress(Exception):
                out[name] = (await redis.config_get(name)).get(name)
        return out
