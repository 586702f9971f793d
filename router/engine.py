"""A whole deployment in one process: router, services and a frontend client.

With the in-memory broker and store (the default) it needs no infrastructure: the demo's
embedded mode and the test kit (:mod:`router.testing`) run on it. Given a real broker and
store it runs the very same code against RabbitMQ and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from worker_sdk import wire
from worker_sdk.broker import Broker
from worker_sdk.client import Client
from worker_sdk.memory import MemoryBroker
from worker_sdk.service import Service, run_services

from .app import Router
from .config import RouterConfig
from .core import Record
from .store import MemoryStore, SessionStore

log = logging.getLogger(__name__)


class Engine:
    """Router + services + client, started and stopped together."""

    def __init__(self, services: Sequence[Service], config: RouterConfig, *,
                 broker: Broker | None = None, store: SessionStore | None = None,
                 prefetch: int = 16) -> None:
        self.config = config
        self.services = list(services)
        self.broker: Broker = broker if broker is not None else MemoryBroker(config.queue_type)
        self.store: SessionStore = store if store is not None else MemoryStore()
        self.embedded = broker is None
        self.router = Router(config, self.broker, self.store)
        self.client = Client(self.broker, config.namespace)
        self.prefetch = prefetch
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._notices: dict[str, list[wire.Notice]] = defaultdict(list)
        self._arrived = asyncio.Event()

    async def start(self) -> None:
        """Start the router, serve the services, start the client."""
        await self.broker.connect()
        await self.router.start()
        self._tasks.append(asyncio.create_task(run_services(
            self.services, self.broker, self.config.namespace, self.prefetch, self._stop),
            name="cloudbunch-services"))
        await self.client.start()
        self._tasks.append(asyncio.create_task(self._collect(), name="cloudbunch-notices"))
        # Serving declares the service queues; wait for that before the first message.
        for service in self.services:
            queue = wire.service_queue(self.config.namespace, service.name)
            for _ in range(500):
                if await self.broker.queue_exists(queue):
                    break
                await asyncio.sleep(0.01)

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
        async for notice in self.client.notices():
            self._notices[notice.session].append(notice)
            self._arrived.set()

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
        await self.idle(session, timeout, accepted=msg_id)
        # Published notices may still be on their way to the client: wait for a quiet spell.
        quiet = 0.02 if self.embedded else 0.15
        while True:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), quiet)
            except TimeoutError:
                break
        mine = [n for n in self._notices[session] if n.in_reply_to == msg_id]
        self._notices[session] = [n for n in self._notices[session] if n.in_reply_to != msg_id]
        return mine
