"""The embedded engine: router, service and client in this process on the memory adapters."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from router.config import RouterConfig
from router.engine import Engine

from .services import PAYLOAD, bench


class Embedded:
    """An :class:`router.engine.Engine` (memory broker and store) with a matching client."""

    def __init__(self, namespace: str) -> None:
        self.engine = Engine([bench], RouterConfig(root=bench.name, namespace=namespace),
                             prefetch=64)
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._early: set[str] = set()
        self._collector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.engine.start()
        self._collector = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(BaseException):
                await self._collector
        await asyncio.wait_for(self.engine.stop(), 30)

    async def _collect(self) -> None:
        async for notice in self.engine.client.notices():
            # The engine keeps every notice for its own converse(); a bench would only grow
            # that list, so it is emptied here.
            self.engine._notices.clear()
            future = self._waiting.pop(notice.in_reply_to, None)
            if future is None:
                self._early.add(notice.in_reply_to)
            elif not future.done():
                future.set_result(None)

    async def ask(self, session: str, payload: Any) -> None:
        msg_id = await self.engine.client.send(session, payload)
        if msg_id in self._early:
            self._early.discard(msg_id)
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = future
        try:
            await asyncio.wait_for(future, 30.0)
        finally:
            self._waiting.pop(msg_id, None)

    async def turn(self, session: str) -> None:
        await self.ask(session, PAYLOAD)
