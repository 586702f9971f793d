"""Fixtures of the web chat suites: router, pizza workers and gateway processes on one
namespace, and raw WebSocket tabs."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from router.store import DEFAULT_REDIS_URL
from tests.integration.procs import Harness, Proc, cli, eventually, opened

PIZZA = [f"router.demo_flow:{name}" for name in
         ("pizza", "menu", "order", "checkout", "address", "payment")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class WebHarness(Harness):
    """A harness that also runs ``cloudbunch web`` processes."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.queues.add(f"{self.ns}.web.notices")
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def gateway(self, *extra: str) -> Proc:
        """Start a gateway on this harness's port; wait until it answers."""
        argv = cli("web", "--namespace", self.ns, "--amqp-url", self.amqp_url,
                   "--redis-url", self.redis_url, "--port", str(self.port), *extra)
        proc = await Proc.spawn(f"web{len(self.procs)}", argv)
        self.procs.append(proc)

        async def up() -> bool:
            if proc.returncode is not None:
                raise AssertionError(f"gateway exited with {proc.returncode}:\n"
                                     f"{proc.output()}")
            try:
                async with aiohttp.ClientSession() as http, \
                        http.get(self.url + "healthz") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False
        await eventually(up, 30.0, "the gateway answering")
        return proc

    async def pizza(self) -> None:
        await self.router("pizza")
        await self.worker(*PIZZA)


@pytest.fixture
async def web(request: pytest.FixtureRequest, namespace: str,
              amqp_url: str) -> AsyncIterator[WebHarness]:
    """A namespace with the pizza flow running (router and workers), no gateway yet."""
    redis_url = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)
    async with opened(WebHarness(namespace, amqp_url, redis_url), request.node) as harness:
        await harness.pizza()
        yield harness


@dataclass
class Tab:
    """A raw WebSocket client speaking the page's protocol."""

    ws: aiohttp.ClientWebSocketResponse
    http: aiohttp.ClientSession
    frames: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str, session: str | None = None, last: int = 0,
                   hello: bool = True) -> Tab:
        http = aiohttp.ClientSession()
        ws = await http.ws_connect(url.replace("http", "ws", 1) + "ws")
        tab = cls(ws, http)
        tab.reader = asyncio.create_task(tab._read())
        if hello:
            await tab.send({"type": "hello", "session": session, "last": last})
            await tab.wait(lambda f: f["type"] == "welcome")
        return tab

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.frames.append(json.loads(msg.data))
        self.close_code = self.ws.close_code
        self.closed.set()

    async def send(self, frame: Any) -> None:
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def say(self, text: str, msg_id: str, payload: Any = None) -> None:
        frame: dict[str, Any] = {"type": "message", "id": msg_id, "text": text}
        if payload is not None:
            frame["payload"] = payload
        await self.send(frame)

    @property
    def session(self) -> str:
        return str(next(f["session"] for f in self.frames if f["type"] == "welcome"))

    def entries(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "entry"]

    def bot_texts(self) -> list[str]:
        return [f["entry"]["text"] for f in self.entries() if f["entry"]["from"] == "bot"]

    async def wait(self, check: Callable[[dict[str, Any]], bool],
                   timeout: float = 15.0) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [f for f in self.frames if check(f)]
            return bool(found)
        await eventually(seen, timeout, f"a frame; have {self.frames[-5:]!r}")
        return found[0]

    async def wait_text(self, fragment: str, timeout: float = 15.0) -> None:
        await eventually(lambda: any(fragment in t for t in self.bot_texts()), timeout,
                         f"bot text {fragment!r}; have {self.bot_texts()!r}")

    async def close(self) -> None:
        await self.ws.close()
        if self.reader is not None:
            await asyncio.wait([self.reader], timeout=5)
        await self.http.close()


@pytest.fixture
async def bare_web(request: pytest.FixtureRequest, namespace: str,
                   amqp_url: str) -> AsyncIterator[WebHarness]:
    """A namespace with nothing running (its queues and keys deleted afterwards)."""
    redis_url = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)
    async with opened(WebHarness(namespace, amqp_url, redis_url), request.node) as harness:
        harness.queues.update(f"{namespace}.service.{spec.split(':')[1]}" for spec in PIZZA)
        yield harness
