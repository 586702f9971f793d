"""``cloudbunch web``: its options and its main function (router/cli.py only registers it).

Every option also reads an environment variable; the connection settings are the usual
``CLOUDBUNCH_*`` ones, shared with the router.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker_sdk.errors import ConfigError

from ...config import ENV, RouterConfig, load_config


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    env: str
    default: Any
    kind: type
    metavar: str | None
    help: str


WEB_OPTIONS: list[Option] = [
    Option("host", "CLOUDBUNCH_WEB_HOST", "127.0.0.1", str, "HOST",
           "address to listen on (0.0.0.0: every interface)"),
    Option("port", "CLOUDBUNCH_WEB_PORT", 8080, int, "PORT", "port to listen on"),
    Option("history", "CLOUDBUNCH_WEB_HISTORY", 200, int, "N",
           "entries of each conversation kept for reloads and reconnects"),
    Option("max_frame", "CLOUDBUNCH_WEB_MAX_FRAME", 4096, int, "BYTES",
           "largest frame a page may send"),
    Option("rate", "CLOUDBUNCH_WEB_RATE", 1.0, float, "PER_SECOND",
           "messages per second one socket may send on average"),
    Option("burst", "CLOUDBUNCH_WEB_BURST", 10, int, "N",
           "messages one socket may send at once before the rate applies"),
    Option("title", "CLOUDBUNCH_WEB_TITLE", "CloudBunch chat", str, "TEXT",
           "the page's title"),
    Option("debug", "CLOUDBUNCH_WEB_DEBUG", False, bool, None,
           "show each session's live stack beside the chat"),
]

ROUTER_SETTINGS = ("amqp_url", "redis_url", "namespace", "session_ttl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``web`` command's options to ``parser``."""
    for opt in WEB_OPTIONS:
        flag = "--" + opt.name.replace("_", "-")
        text = f"{opt.help} [env {opt.env}; default {opt.default}]"
        if opt.kind is bool:
            parser.add_argument(flag, dest=opt.name, action="store_const", const=True,
                                default=None, help=text)
        else:
            parser.add_argument(flag, dest=opt.name, metavar=opt.metavar, help=text)
    texts = {"amqp_url": "RabbitMQ URL", "redis_url": "Redis URL (one server)",
             "namespace": "prefix of every queue and key (the router's)",
             "session_ttl": "seconds a conversation's history is kept after its last entry "
                            "(use the router's session TTL)"}
    for name in ROUTER_SETTINGS:
        default = RouterConfig.__dataclass_fields__[name].default
        parser.add_argument("--" + name.replace("_", "-"), dest=name,
                            metavar=name.split("_")[-1].upper(),
                            help=f"{texts[name]} [env {ENV[name]}; default {default}]")


def web_settings(options: Mapping[str, Any], env: Mapping[str, str] | None = None
                 ) -> dict[str, Any]:
    """The web options from ``options`` (None: not given), else the environment, else the
    defaults; one clear error for a bad value."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    for opt in WEB_OPTIONS:
        raw = options.get(opt.name)
        source = "--" + opt.name.replace("_", "-")
        if raw is None and opt.env in env:
            raw, source = env[opt.env], opt.env
        if raw is None:
            out[opt.name] = opt.default
            continue
        if opt.kind is bool:
            text = str(raw).strip().lower()
            if raw is True or text in ("1", "true", "yes", "on"):
                out[opt.name] = True
            elif text in ("0", "false", "no", "off", ""):
                out[opt.name] = False
            else:
                raise ConfigError(f"{source} must be 1 or 0, not {raw!r}")
            continue
        try:
            value = opt.kind(raw)
        except ValueError:
            raise ConfigError(f"{source} must be a {'whole ' if opt.kind is int else ''}"
                              f"number, not {raw!r}") from None
        if opt.kind in (int, float) and value <= 0:
            raise ConfigError(f"{source} must be above 0, not {raw!r}")
        if opt.name == "port" and value > 65535:
            raise ConfigError(f"{source} must be at most 65535, not {raw!r}")
        out[opt.name] = value
    return out


def run(options: Mapping[str, Any]) -> int:
    """The ``web`` command: serve until SIGTERM or SIGINT."""
    from worker_sdk.service import run_event_loop

    config = load_config({name: options.get(name) for name in ROUTER_SETTINGS} | {"root": "-"})
    web = web_settings(options)
    return run_event_loop(serve(config, web))


async def serve(config: RouterConfig, web: Mapping[str, Any], *,
                ready: asyncio.Event | None = None) -> int:
    """Run one gateway replica on RabbitMQ and Redis until SIGTERM/SIGINT."""
    from aiohttp import web as aioweb

    from worker_sdk.amqp import AmqpBroker
    from worker_sdk.urls import redact

    from ...redis_store import RedisStore
    from .gateway import WebGateway
    from .history import RedisHistory

    history = RedisHistory(config.redis_url, config.namespace, keep=web["history"],
                           ttl=config.session_ttl)
    store = RedisStore(config.redis_url, config.namespace)
    broker = AmqpBroker(config.amqp_url, name="cloudbunch-web", connect_timeout=10.0)
    gateway = WebGateway(broker, history, _web_config(config.namespace, web), store=store)
    runner: aioweb.AppRunner | None = None
    try:
        await store.ping()
        await broker.connect()
        await gateway.start()
        runner = aioweb.AppRunner(gateway.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = aioweb.TCPSite(runner, web["host"], web["port"])
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {web['host']}:{web['port']}: {exc.strerror}; "
                              "choose another --port or CLOUDBUNCH_WEB_PORT") from None
        print(f"cloudbunch web: serving http://{web['host']}:{web['port']}/ "
              f"(namespace {config.namespace!r}, RabbitMQ {redact(config.amqp_url)})",
              file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        lost = asyncio.create_task(broker.wait_lost())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (lost, stopped):
            task.cancel()
        if not stop.is_set():
            print("cloudbunch web: giving up: the RabbitMQ connection could not be restored; "
                  "exiting so a supervisor restarts it", file=sys.stderr)
            return 1
        return 0
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(gateway.stop(), 5.0)
        if runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.cleanup(), 3.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.close(), 2.0)
        with contextlib.suppress(Exception):
            await store.close()


def _web_config(namespace: str, web: Mapping[str, Any]) -> Any:
    from .gateway import WebConfig

    return WebConfig(namespace=namespace, debug=web["debug"], max_frame=web["max_frame"],
                     rate=web["rate"], burst=web["burst"], title=web["title"])
