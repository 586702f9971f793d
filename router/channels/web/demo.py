"""``cloudbunch demo --web``: the pizza bot in the browser, in one process.

The same engine choice as the terminal demo (RabbitMQ and Redis when they answer, else the
embedded in-memory engine), with a web gateway on it: its history in Redis, or in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import webbrowser

from aiohttp import web as aioweb

from worker_sdk.errors import ConfigError
from worker_sdk.shutdown import close_all, stop_on_signals

from ...config import RouterConfig
from ...demo import choose_engine
from .gateway import WebConfig, WebGateway
from .history import History, MemoryHistory, RedisHistory


def _can_open_a_browser() -> bool:
    """Whether a graphical browser can open (a text browser would take over the terminal)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


async def run_web_demo(config: RouterConfig, *, mode: str = "auto", host: str = "127.0.0.1",
                       port: int = 8080, open_browser: bool = True,
                       ready: asyncio.Event | None = None) -> int:
    """Serve the pizza bot's chat page until SIGINT or SIGTERM."""
    engine = await choose_engine(config, mode)
    history: History
    if engine.embedded:
        history = MemoryHistory()
    else:
        history = RedisHistory(config.redis_url, config.namespace, ttl=config.session_ttl)
    gateway = WebGateway(engine.broker, history, WebConfig(
        namespace=config.namespace, debug=True, title="Bunch Pizza"), store=engine.store)
    async with engine:
        await gateway.start()
        runner = aioweb.AppRunner(gateway.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            try:
                await aioweb.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; choose "
                                  "another --port") from None
            url = f"http://{host}:{port}/"
            print(f"demo: the pizza bot is at {url} (the panel on the right shows the "
                  "session's stack; Ctrl-C stops)", flush=True)
            if open_browser and _can_open_a_browser():
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(webbrowser.open, url)
            stop = stop_on_signals()
            if ready is not None:
                ready.set()
            await stop.wait()
        finally:
            await close_all((gateway.stop, 5.0), (runner.cleanup, 3.0))
    print("demo: stopped", flush=True)
    return 0
