"""A whole deployment in one process: router, services and a frontend client.

With the in-memory broker and store (the default) it needs no infrastructure: the demo's
embedded mode and the test kit (:mod:`router.testing`) run on it, and it knows when a chain is
done from the broker itself (:meth:`MemoryBroker.join`). Given a real broker and store it runs
the very same code against RabbitMQ and Redis, and watches the store instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from worker_sdk import wire
from worker_sdk.broker import Broker
from worker_sdk.client import Client, NoticeIterator
from worker_sdk.memory import MemoryBroker
from worker_sdk.service import Service, run_services

from .app import Router
from .config import RouterConfig
from .core import Record
from .store import MemoryStore, SessionStore

log = logging.getLogger(__name__)


class VirtualClock:
    """A clock that moves only when told (:meth:`Engine.advance`); reads like time.time."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def move_to_ms(self, ms: int) -> None:
        """Go forward to the millisecond ``ms`` (never back). Half a millisecond past it, so
        that ``int(clock() * 1000)`` is exactly ``ms`` despite float rounding."""
        self.now = max(self.now, (ms + 0.5) / 1000)


class Engine:
    """Router + services + client, started and stopped together.

    With ``clock`` a :class:`VirtualClock` (embedded only), time stands still until
    :meth:`advance` moves it: deadlines and idle timers fire then, and only then.
    """

    def __init__(self, services: Sequence[Service], config: RouterConfig, *,
                 broker: Broker | None = None, store: SessionStore | None = None,
                 prefetch: int = 16, clock: VirtualClock | None = None) -> None:
        self.config = config
        self.services = list(services)
        self.memory = MemoryBroker(config.queue_type) if broker is None else None
        """The in-memory broker, when embedded: the engine waits on its ``join``."""
        self.broker: Broker = broker if broker is not None else self.memory  # type: ignore[assignment]
        if clock is not None and (broker is not None or store is not None):
            raise ValueError("a virtual clock needs the in-memory broker and store")
        self.clock = clock
        self.store: SessionStore = store if store is not None else MemoryStore(
            clock=clock or time.time)
        self.embedded = broker is None
        self.router = Router(config, self.broker, self.store, clock=clock or time.time,
                             scan=clock is None)
        self.client = Client(self.broker, config.namespace, partitions=config.partitions)
        self.prefetch = prefetch
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._notices: dict[str, list[wire.Notice]] = defaultdict(list)
        self._arrived = asyncio.Event()
        self._inbox: NoticeIterator | None = None

    async def start(self) -> None:
        """Start the router, serve the services, start the client."""
        await self.broker.connect()
        await self.router.start()
        self._tasks.append(asyncio.create_task(run_services(
            self.services, self.broker, self.config.namespace, self.prefetch, self._stop),
            name="cloudbunch-services"))
        await self.client.start()
        self._inbox = self.client.notices()
        self._tasks.append(asyncio.create_task(self._collect(), name="cloudbunch-notices"))
        # Serving declares and consumes the service queues: wait for that before the first
        # message (in memory it takes a few turns of the event loop).
        for service in self.services:
            queue = wire.service_queue(self.config.namespace, service.name)
            for _ in range(10_000 if self.memory is not None else 500):
                if await self.broker.consumer_count(queue) > 0:
                    break
                await asyncio.sleep(0 if self.memory is not None else 0.01)

    async def stop(self) -> None:
        """Stop everything (services first, then router and client)."""
        self._stop.set()
        await self.router.stop()
        for task in self._tasks:
            if task.get_name() == "cloudbunch-notices":
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.client.close()
        await self.broker.close()
        await self.store.close()

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _collect(self) -> None:
        assert self._inbox is not None
        async for notice in self._inbox:
            self._notices[notice.session].append(notice)
            self._arrived.set()

    async def advance(self, seconds: float, timeout: float = 10.0) -> None:
        """Virtual time: move the clock ``seconds`` forward. Every deadline and idle timer
        that falls due on the way fires at its own moment, in order, and what it causes
        runs to the end before the clock moves on."""
        clock, store = self.clock, self.store
        if clock is None or not isinstance(store, MemoryStore):
            raise RuntimeError("advance() needs an Engine made with clock=VirtualClock()")
        if seconds < 0:
            raise ValueError(f"time does not go back: advance({seconds})")
        target_ms = int((clock.now + seconds) * 1000)
        await self.settle(timeout)
        for _ in range(100_000):
            due = store.next_due_ms()
            if due is None or due > target_ms:
                clock.move_to_ms(target_ms)
                return
            clock.move_to_ms(due)
            await self.router.fire_due()
            await self.settle(timeout)
        raise RuntimeError("advance(): deadlines keep falling due at the same moment; "
                           "a turn that never settles?")

    async def settle(self, timeout: float = 10.0, *, session: str | None = None,
                     accepted: str | None = None) -> None:
        """Embedded: wait until every published message is consumed and handled, and file
        the notices that arrived. With ``session``, also return as soon as that session's
        chain is over and its notices are in, though a service handler still runs (one
        that never answers, whose turn the router timed out)."""
        assert self.memory is not None and self._inbox is not None
        waits = {asyncio.ensure_future(self.memory.join())}
        if session is not None and isinstance(self.store, MemoryStore):
            waits.add(asyncio.ensure_future(self._chain_over(self.store, session, accepted)))
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        if not done:
            raise TimeoutError(f"the embedded deployment was still busy after {timeout} s "
                               "(a handler that never returns?)")
        for task in done:
            task.result()
        for notice in self._inbox.received():
            self._notices[notice.session].append(notice)
            self._arrived.set()

    async def _chain_over(self, store: MemoryStore, session: str, accepted: str | None) -> None:
        """Return when the session has taken ``accepted``, runs no chain and owes nothing,
        and the router and this client have handled all they were sent (woken by commits)."""
        assert self.memory is not None
        while True:
            store.changed.clear()
            snap = await store.load(session, accepted)
            rec = Record.decode(snap.record) if snap.record is not None else None
            if (snap.seen or accepted is None) and not snap.outbox and (rec is None or (
                    rec.chain is None and not rec.waiting and not rec.held)):
                names = wire.queue_names(self.config.namespace)
                await self.memory.join(queues=(names["ingress"], names["replies"],
                                               self.client.reply_queue))
                return
            await store.changed.wait()

    async def record(self, session: str) -> Record | None:
        """The session's record as stored now (None if it has none)."""
        snap = await self.store.load(session)
        return Record.decode(snap.record) if snap.record is not None else None

    async def idle(self, session: str, timeout: float = 10.0, *,
                   accepted: str | None = None) -> None:
        """Wait until the session has no chain running, nothing waiting and nothing unsent
        (and, if ``accepted`` is a client message id, until the router has taken that one)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            snap = await self.store.load(session, accepted)
            rec = Record.decode(snap.record) if snap.record is not None else None
            if (snap.seen or accepted is None) and not snap.outbox and (rec is None or (
                    rec.chain is None and not rec.waiting and not rec.held)):
                return
            if loop.time() > deadline:
                raise TimeoutError(f"session {session!r} still busy after {timeout} s: "
                                   f"stack {[f.service for f in rec.stack] if rec else []}")
            await asyncio.sleep(0.002 if self.embedded else 0.01)

    async def converse(self, session: str, payload: Any, *, timeout: float = 10.0,
                       entry: str | None = None, meta: dict[str, Any] | None = None,
                       end: bool = False) -> list[wire.Notice]:
        """Send one message (or ``end``), wait for its chain to finish, return its notices."""
        if end:
            msg_id = await self.client.end(session)
        else:
            msg_id = await self.client.send(session, payload, entry=entry, meta=meta)
        if self.memory is not None:
            await self.settle(timeout, session=session, accepted=msg_id)
            return self.take(session, msg_id)
        await self.idle(session, timeout, accepted=msg_id)
        # Published notices may still be on their way to the client: wait for a quiet spell.
        quiet = 0.02 if self.embedded else 0.15
        while True:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), quiet)
            except TimeoutError:
                break
        return self.take(session, msg_id)

    async def wait_notices(self, session: str) -> None:
        """Return once the session has notices that nobody took yet (an idle timer's, say)."""
        while not self._notices[session]:
            self._arrived.clear()
            await self._arrived.wait()

    def take(self, session: str, in_reply_to: str | None = None) -> list[wire.Notice]:
        """Remove and return the session's notices received so far (only those in reply to
        ``in_reply_to``, when given)."""
        mine = [n for n in self._notices[session]
                if in_reply_to is None or n.in_reply_to == in_reply_to]
        self._notices[session] = [n for n in self._notices[session] if n not in mine]
        return mine
