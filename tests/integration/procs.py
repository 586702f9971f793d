"""End-to-end test helpers: router and worker processes, and raw parties on plain aio-pika.

A :class:`Harness` owns one random namespace. It starts real ``router.cli`` processes, acts
as a raw service (consumes ``NS.service.X`` and publishes hand-made msgpack replies) or as a
raw frontend (publishes client messages, collects notices), reads sessions from Redis, and
on teardown stops the processes and deletes the namespace's queues and keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aio_pika
import msgpack
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

# Re-exported: the tests import them from here.
from harness.processes import REPO as REPO
from harness.processes import Proc as Proc
from harness.processes import child_env as child_env
from harness.waiting import eventually as eventually
from router.core import Record
from router.redis_store import RedisStore
from worker_sdk import wire
from worker_sdk.service import load_service

QUEUE_TYPE = "quorum"
SHARED_ARGS = {"x-queue-type": QUEUE_TYPE}


def pack(obj: Any) -> bytes:
    """msgpack as every party writes it (str as str, bytes as bin)."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False)




def cli(*args: str) -> list[str]:
    """The command line of ``cloudbunch ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "router.cli", *args]




@dataclass
class RawService:
    """A service played by the test: its dispatches land in ``dispatches``."""

    harness: Harness
    name: str
    queue: str
    dispatches: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    handler: Callable[[dict[str, Any]], Awaitable[None]] | None = None
    """If set, each dispatch is handed to it in a task of its own instead of queued."""
    seen: list[dict[str, Any]] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The AMQP headers of each dispatch, by turn."""

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        body = unpack(message.body)
        if isinstance(body, dict):
            self.headers[str(body.get("turn"))] = dict(message.headers or {})
        self.seen.append(body)
        await message.ack()
        if self.handler is not None:
            task = asyncio.create_task(self.handler(body))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.dispatches.put_nowait(body)

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next dispatch; fails after ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self.dispatches.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no dispatch reached service {self.name!r} within "
                                 f"{timeout} s") from None

    async def expect_none(self, wait: float = 0.4) -> None:
        """Assert that no dispatch arrives within ``wait`` seconds."""
        try:
            got = await asyncio.wait_for(self.dispatches.get(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"service {self.name!r} got an unexpected dispatch: {got!r}")

    async def reply(self, dispatch: dict[str, Any], action: str, **fields: Any) -> None:
        """Publish a hand-made reply to ``dispatch`` (echoing its session and turn)."""
        body = {"v": 1, "session": dispatch["session"], "turn": dispatch["turn"],
                "action": action, **fields}
        await self.harness.publish(self.harness.replies, pack(body))


@dataclass
class Frontend:
    """A frontend played by the test: raw client messages out, notices in."""

    harness: Harness
    queue: str
    notices: list[dict[str, Any]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.notices.append(unpack(message.body))
        self.arrived.set()
        await message.ack()

    def body(self, session: str, payload: Any = None, *, id: str | None = None,
             seq: int | None = None, entry: str | None = None, meta: Any = None,
             type: str = "message") -> dict[str, Any]:
        body: dict[str, Any] = {"v": 1, "type": type, "session": session,
                                "id": id or secrets.token_hex(8), "reply_to": self.queue}
        for name, value in (("payload", payload), ("seq", seq), ("entry", entry),
                            ("meta", meta)):
            if value is not None:
                body[name] = value
        return body

    async def send(self, session: str, payload: Any = None, **kw: Any) -> str:
        """Publish one client message to NS.ingress; return its id."""
        body = self.body(session, payload, **kw)
        await self.harness.publish(self.harness.ingress, pack(body), body["id"])
        return str(body["id"])

    def of(self, msg_id: str, *, dedup: bool = True) -> list[dict[str, Any]]:
        """The notices of one client message's chain, in arrival order."""
        out: list[dict[str, Any]] = []
        ids: set[str] = set()
        for notice in self.notices:
            if notice.get("in_reply_to") != msg_id:
                continue
            if dedup and notice.get("id") in ids:
                continue
            ids.add(notice.get("id"))  # type: ignore[arg-type]
            out.append(notice)
        return out

    async def wait(self, msg_id: str, count: int, timeout: float = 5.0,
                   settle: float = 0.0) -> list[dict[str, Any]]:
        """Wait for ``count`` notices of ``msg_id``; then ``settle`` s more; return them."""
        await eventually(lambda: len(self.of(msg_id)) >= count, timeout,
                         f"{count} notices for {msg_id!r}, have {self.of(msg_id)!r}")
        if settle:
            await asyncio.sleep(settle)
        return self.of(msg_id)

    async def outputs(self, msg_id: str, count: int, timeout: float = 5.0) -> list[Any]:
        """The payloads of ``count`` output notices of ``msg_id`` (fails on other types)."""
        notices = await self.wait(msg_id, count, timeout)
        assert all(n["type"] == "output" for n in notices), notices
        return [n["payload"] for n in notices]


@dataclass
class DeadLetter:
    body: bytes
    headers: dict[str, Any]
    message_id: str | None


HarnessT = TypeVar("HarnessT", bound="Harness")


@contextlib.asynccontextmanager
async def opened(harness: HarnessT, node: Any) -> AsyncIterator[HarnessT]:
    """Open ``harness``; afterwards stop its processes (printing their output if the test
    ``node`` failed) and delete its queues and keys."""
    try:
        await harness.open()
        yield harness
    finally:
        report = getattr(node, "rep_call", None)
        await harness.stop_all(report is None or report.failed)
        await harness.cleanup()


class Harness:
    """One test's namespace, its processes and its raw parties."""

    def __init__(self, namespace: str, amqp_url: str, redis_url: str) -> None:
        self.ns = namespace
        self.amqp_url = amqp_url
        self.redis_url = redis_url
        self.ingress = f"{namespace}.ingress"
        self.replies = f"{namespace}.replies"
        self.dead = f"{namespace}.dead"
        self.procs: list[Proc] = []
        self.queues: set[str] = {self.ingress, self.replies, self.dead}
        self.dead_letters: list[DeadLetter] = []
        self._dead_consuming = False
        self._conn: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self.store = RedisStore(redis_url, namespace)

    async def open(self) -> None:
        # Fails (not skips) when RabbitMQ or Redis is down.
        self._conn = await aio_pika.connect(self.amqp_url, timeout=10)
        self._channel = await self._conn.channel(publisher_confirms=True)
        await self.store.ping()

    @property
    def channel(self) -> AbstractChannel:
        assert self._channel is not None
        return self._channel

    # ------------------------------------------------------------------ processes

    async def router(self, root: str = "A", *, wait: bool = True, **options: Any) -> Proc:
        """Start a ``router`` process (options as keyword arguments, ``max_depth=2``...)."""
        before = await self.consumers(self.replies)
        argv = cli("router", "--namespace", self.ns, "--root", root,
                   "--queue-type", QUEUE_TYPE, "--amqp-url", self.amqp_url,
                   "--redis-url", self.redis_url)
        options.setdefault("turn_timeout", 5)
        for name, value in options.items():
            argv += ["--" + name.replace("_", "-"), str(value)]
        proc = await Proc.spawn(f"router{len(self.procs)}", argv)
        self.procs.append(proc)
        if wait:
            # It consumes ingress first, then replies: the replies consumer means ready.
            await self._wait_ready(proc, self.replies, before + 1)
        return proc

    async def worker(self, *specs: str, prefetch: int = 16) -> Proc:
        """Start a ``worker`` process for ``module:attr`` services; wait until they consume."""
        names = [load_service(spec).name for spec in specs]
        queues = [f"{self.ns}.service.{name}" for name in names]
        self.queues.update(queues)
        before = {q: await self.consumers(q) for q in queues}
        argv = cli("worker", *specs, "--namespace", self.ns, "--queue-type", QUEUE_TYPE,
                   "--amqp-url", self.amqp_url, "--prefetch", str(prefetch))
        proc = await Proc.spawn(f"worker{len(self.procs)}", argv)
        self.procs.append(proc)
        for queue in queues:
            await self._wait_ready(proc, queue, before[queue] + 1)
        return proc

    async def _wait_ready(self, proc: Proc, queue: str, count: int) -> None:
        async def ready() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"{proc.name} exited with {proc.returncode}:\n"
                                     f"{proc.output()}")
            return await self.consumers(queue) >= count
        await eventually(ready, 20.0, f"{proc.name} consuming {queue}")

    async def stop_all(self, failed: bool) -> None:
        await asyncio.gather(*(p.stop() for p in self.procs), return_exceptions=True)
        for proc in self.procs:
            if failed:
                print(f"----- {proc.name} (pid {proc.pid}, exit {proc.returncode}) -----")
                print(proc.output())
            proc.close()

    # ------------------------------------------------------------------ broker

    async def consumers(self, queue: str) -> int:
        """Consumer count of ``queue`` by a passive declare (0 when it does not exist)."""
        assert self._conn is not None
        channel = await self._conn.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except Exception:
            return 0
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return int(declared.declaration_result.consumer_count or 0)

    async def message_count(self, queue: str) -> int:
        assert self._conn is not None
        channel = await self._conn.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def publish(self, queue: str, body: bytes, message_id: str | None = None) -> None:
        """Publish persistent msgpack to ``queue`` on the default exchange (confirmed)."""
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, content_type="application/msgpack",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=message_id or secrets.token_hex(8)),
            routing_key=queue, mandatory=True)

    async def service(self, name: str, *, prefetch: int = 64) -> RawService:
        """Declare ``NS.service.NAME`` as a worker would and consume it as a raw service."""
        queue = f"{self.ns}.service.{name}"
        self.queues.add(queue)
        assert self._conn is not None
        channel = await self._conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        declared = await channel.declare_queue(queue, durable=True, arguments=SHARED_ARGS)
        raw = RawService(self, name, queue)
        await declared.consume(raw.on_message)
        return raw

    async def frontend(self) -> Frontend:
        """A frontend with a queue of its own."""
        queue = f"{self.ns}.client.{secrets.token_hex(4)}"
        self.queues.add(queue)
        assert self._conn is not None
        channel = await self._conn.channel()
        declared = await channel.declare_queue(queue, durable=False, exclusive=True)
        front = Frontend(self, queue)
        await declared.consume(front.on_message)
        return front

    async def watch_dead(self) -> None:
        """Collect ``NS.dead`` into ``dead_letters`` (the router must have declared it)."""
        if self._dead_consuming:
            return
        assert self._conn is not None
        channel = await self._conn.channel()
        declared = await channel.declare_queue(self.dead, passive=True)

        async def on_dead(message: AbstractIncomingMessage) -> None:
            self.dead_letters.append(DeadLetter(message.body, dict(message.headers or {}),
                                                message.message_id))
            await message.ack()

        await declared.consume(on_dead)
        self._dead_consuming = True

    async def dead_letter(self, body: bytes, timeout: float = 5.0) -> DeadLetter:
        """The dead letter whose body is exactly ``body``."""
        await self.watch_dead()
        found: list[DeadLetter] = []

        def check() -> bool:
            found[:] = [d for d in self.dead_letters if d.body == body]
            return bool(found)

        await eventually(check, timeout, f"a dead letter with body {body[:40]!r}...")
        return found[0]

    # ------------------------------------------------------------------ Redis

    async def record(self, session: str) -> Record | None:
        snap = await self.store.load(session)
        return Record.decode(snap.record) if snap.record is not None else None

    async def stack(self, session: str) -> list[tuple[str, Any]]:
        """The session's frames as (service, state), root first."""
        rec = await self.record(session)
        return [(f.service, f.state) for f in rec.stack] if rec is not None else []

    async def idle(self, session: str, timeout: float = 5.0) -> None:
        """Wait until the session has no turn in flight and nothing waiting or unsent."""
        async def check() -> bool:
            snap = await self.store.load(session)
            rec = Record.decode(snap.record) if snap.record is not None else None
            return not snap.outbox and (rec is None or (
                rec.turn is None and not rec.waiting and not rec.held))
        await eventually(check, timeout, f"session {session!r} idle")

    # ------------------------------------------------------------------ teardown

    async def cleanup(self) -> None:
        """Delete every queue this namespace used, then its Redis keys."""
        if self._conn is not None:
            for queue in sorted(self.queues):
                try:
                    channel = await self._conn.channel()
                    await channel.queue_delete(queue)
                    await channel.close()
                except Exception:  # a queue that never existed, or a closed channel
                    continue
            for exchange in wire.exchange_names(self.ns).values():
                with contextlib.suppress(Exception):
                    channel = await self._conn.channel()
                    await channel.exchange_delete(exchange)
                    await channel.close()
            with contextlib.suppress(Exception):
                await self._conn.close()
        with contextlib.suppress(Exception):
            await self.store.delete_namespace()
        await self.store.close()
