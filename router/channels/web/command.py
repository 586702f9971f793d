"""``cloudbunch web``: its options and its main function (router/cli.py only registers it).

Every option also reads an environment variable; the connection settings are the usual
``CLOUDBUNCH_*`` ones, shared with the router.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import click

from worker_sdk.errors import ConfigError
from worker_sdk.settings import SettingsBase, borrow, setting
from worker_sdk.shutdown import close_all, stop_on_signals, until_stopped

from ...cli import run_async, settings_options
from ...config import RouterConfig, ServerSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSettings(SettingsBase):
    """The web gateway's own settings (variables ``CLOUDBUNCH_WEB_*``)."""

    env_prefix: ClassVar[str] = "CLOUDBUNCH_WEB_"

    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0: every interface)",
                        metavar="HOST")
    port: int = setting(8080, "port to listen on", metavar="PORT", minimum=1, maximum=65535)
    history: int = setting(200, "entries of each conversation kept for reloads and "
                           "reconnects", metavar="N", minimum=1)
    max_frame: int = setting(4096, "largest frame a page may send", metavar="BYTES",
                             minimum=1)
    rate: float = setting(1.0, "messages per second one socket may send on average",
                          metavar="PER_SECOND", minimum=0, above=True)
    burst: int = setting(10, "messages one socket may send at once before the rate applies",
                         metavar="N", minimum=1)
    title: str = setting("CloudBunch chat", "the page's title", metavar="TEXT")
    debug: bool = setting(False, "show each session's live stack beside the chat",
                          metavar="")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebServers(ServerSettings):
    """Where RabbitMQ and Redis are, and how long a conversation's history is kept."""

    session_ttl: float = borrow(RouterConfig, "session_ttl")


def web_settings(options: Mapping[str, Any], env: Mapping[str, str] | None = None
                 ) -> dict[str, Any]:
    """The web options from ``options`` (None: not given), else the environment, else the
    defaults; one clear error for a bad value."""
    given = {k: v for k, v in options.items() if v is not None}
    if env is None:
        return dataclasses.asdict(WebSettings.from_env(**given))
    return dataclasses.asdict(WebSettings.from_env(env, **given))


@click.command("web", help="Run one web chat gateway replica (any number may run behind a "
               "load balancer). SIGTERM or SIGINT stops it.",
               short_help="Serve the web chat: a page and a WebSocket per tab.")
@settings_options(WebSettings, name="web")
@settings_options(WebServers, name="servers")
def command(web: WebSettings, servers: WebServers) -> None:
    run_async(serve(servers, dataclasses.asdict(web)))


async def serve(config: WebServers | RouterConfig, web: Mapping[str, Any], *,
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
    broker = AmqpBroker(config.amqp_url, name="cloudbunch-web")
    gateway = WebGateway(broker, history,
                         _web_config(config.namespace, web, config.partitions), store=store)
    runner: aioweb.AppRunner | None = None
    try:
        await store.connect()
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
        stop = stop_on_signals()
        if ready is not None:
            ready.set()
        if not await until_stopped(stop, broker.wait_lost()):
            print("cloudbunch web: giving up: the RabbitMQ connection could not be restored; "
                  "exiting so a supervisor restarts it", file=sys.stderr)
            return 1
        return 0
    finally:
        await close_all((gateway.stop, 5.0), (None if runner is None else runner.cleanup, 3.0),
                        (broker.close, 2.0), (store.close, None))


def _web_config(namespace: str, web: Mapping[str, Any], partitions: int = 0) -> Any:
    from .gateway import WebConfig

    return WebConfig(namespace=namespace, debug=web["debug"], max_frame=web["max_frame"],
                     rate=web["rate"], burst=web["burst"], title=web["title"],
                     partitions=partitions)
