"""``cloudbunch telegram``: its options and its main function (router/cli.py only registers it).

The bot token is read from ``CLOUDBUNCH_TELEGRAM_TOKEN`` only (an option would show it in
the process list) and is never logged: a filter masks it in every log line of the process.
Every option also reads an environment variable; the connection settings are the usual
``CLOUDBUNCH_*`` ones, shared with the router.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from worker_sdk.errors import ConfigError

from ...config import ENV, RouterConfig, load_config

log = logging.getLogger(__name__)

TOKEN_ENV = "CLOUDBUNCH_TELEGRAM_TOKEN"
SECRET_ENV = "CLOUDBUNCH_TELEGRAM_WEBHOOK_SECRET"


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    env: str
    default: Any
    kind: type
    metavar: str
    help: str


TELEGRAM_OPTIONS: list[Option] = [
    Option("api_url", "CLOUDBUNCH_TELEGRAM_API_URL", "https://api.telegram.org", str, "URL",
           "the Bot API server (a local Bot API server, or a test double)"),
    Option("webhook_url", "CLOUDBUNCH_TELEGRAM_WEBHOOK_URL", None, str, "URL",
           "receive updates on this public HTTPS URL instead of long polling"),
    Option("listen_host", "CLOUDBUNCH_TELEGRAM_LISTEN_HOST", "127.0.0.1", str, "HOST",
           "address the webhook server listens on (behind the HTTPS proxy)"),
    Option("listen_port", "CLOUDBUNCH_TELEGRAM_LISTEN_PORT", 8443, int, "PORT",
           "port the webhook server listens on"),
    Option("polling_timeout", "CLOUDBUNCH_TELEGRAM_POLLING_TIMEOUT", 30, int, "SECONDS",
           "how long one long-polling request waits for updates"),
    Option("rate_bot", "CLOUDBUNCH_TELEGRAM_RATE_BOT", 30.0, float, "PER_SECOND",
           "messages per second the whole bot sends at most (Telegram: about 30)"),
    Option("rate_chat", "CLOUDBUNCH_TELEGRAM_RATE_CHAT", 1.0, float, "PER_SECOND",
           "messages per second to one chat (Telegram: about 1)"),
    Option("rate_group", "CLOUDBUNCH_TELEGRAM_RATE_GROUP", 20 / 60, float, "PER_SECOND",
           "messages per second to one group (Telegram: 20 a minute)"),
    Option("burst", "CLOUDBUNCH_TELEGRAM_BURST", 3, int, "N",
           "messages one chat may get at once before its rate applies"),
]

ROUTER_SETTINGS = ("amqp_url", "namespace")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``telegram`` command's options to ``parser``."""
    for opt in TELEGRAM_OPTIONS:
        default = "none: long polling" if opt.default is None else (
            f"{opt.default:.3g}" if isinstance(opt.default, float) else opt.default)
        parser.add_argument("--" + opt.name.replace("_", "-"), dest=opt.name,
                            metavar=opt.metavar,
                            help=f"{opt.help} [env {opt.env}; default {default}]")
    texts = {"amqp_url": "RabbitMQ URL", "namespace": "prefix of every queue (the router's)"}
    for name in ROUTER_SETTINGS:
        default = RouterConfig.__dataclass_fields__[name].default
        parser.add_argument("--" + name.replace("_", "-"), dest=name,
                            metavar=name.split("_")[-1].upper(),
                            help=f"{texts[name]} [env {ENV[name]}; default {default}]")


def telegram_settings(options: Mapping[str, Any], env: Mapping[str, str] | None = None
                      ) -> dict[str, Any]:
    """The options from ``options`` (None: not given), else the environment, else the
    defaults, plus ``token`` and ``secret``; one clear error for a bad or missing value."""
    env = os.environ if env is None else env
    out: dict[str, Any] = {}
    for opt in TELEGRAM_OPTIONS:
        raw = options.get(opt.name)
        source = "--" + opt.name.replace("_", "-")
        if raw is None and env.get(opt.env):
            raw, source = env[opt.env], opt.env
        if raw is None:
            out[opt.name] = opt.default
            continue
        try:
            value = opt.kind(raw)
        except ValueError:
            raise ConfigError(f"{source} must be a {'whole ' if opt.kind is int else ''}"
                              f"number, not {raw!r}") from None
        if opt.kind in (int, float) and value <= 0:
            raise ConfigError(f"{source} must be above 0, not {raw!r}")
        if opt.name == "listen_port" and value > 65535:
            raise ConfigError(f"{source} must be at most 65535, not {raw!r}")
        if opt.name in ("api_url", "webhook_url") and urlsplit(value).scheme not in (
                "http", "https"):
            raise ConfigError(f"{source} must be an http:// or https:// URL, not {raw!r}")
        out[opt.name] = value
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        raise ConfigError(f"no bot token: set {TOKEN_ENV} to the token @BotFather gave you")
    if ":" not in token or any(c.isspace() for c in token):
        raise ConfigError(f"{TOKEN_ENV} does not look like a bot token "
                          "(digits, a colon, then letters): copy it again from @BotFather")
    out["token"] = token
    # Telegram sends this secret with every webhook request; replicas must agree on it, so
    # by default it is derived from the token (which it does not reveal).
    out["secret"] = env.get(SECRET_ENV) or hashlib.sha256(
        b"cloudbunch-webhook:" + token.encode()).hexdigest()[:48]
    return out


class TokenFilter(logging.Filter):
    """Masks the bot token in every log record (it is part of each Bot API URL)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self.token = token

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.token in message:
            record.msg = message.replace(self.token, "***")
            record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1])
            if self.token in text:
                record.msg = f"{record.msg} ({text.replace(self.token, '***')})"
                record.exc_info = None
        return True


def mask_token_in_logs(token: str) -> TokenFilter:
    """Install :class:`TokenFilter` on every handler of the root logger."""
    token_filter = TokenFilter(token)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        handler.addFilter(token_filter)
    return token_filter


def run(options: Mapping[str, Any], *, verbose: bool = False) -> int:
    """The ``telegram`` command: serve until SIGTERM or SIGINT."""
    from worker_sdk.service import run_event_loop

    config = load_config({name: options.get(name) for name in ROUTER_SETTINGS} | {"root": "-"})
    settings = telegram_settings(options)
    try:
        import aiogram  # noqa: F401
    except ImportError:
        raise ConfigError("the Telegram gateway needs aiogram 3: pip install "
                          "'cloudbunch[telegram]'") from None
    mask_token_in_logs(settings["token"])
    if not verbose:
        # aiogram logs every handled update at INFO; our own lines say what matters.
        logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    return run_event_loop(serve(config, settings))


def make_bot(settings: Mapping[str, Any]) -> Any:
    """An aiogram Bot for the configured Bot API server."""
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    session = AiohttpSession(api=TelegramAPIServer.from_base(settings["api_url"].rstrip("/")))
    return Bot(settings["token"], session=session)


async def serve(config: RouterConfig, settings: Mapping[str, Any], *,
                ready: asyncio.Event | None = None) -> int:
    """Run one gateway on RabbitMQ until SIGTERM/SIGINT (exit 0) or a lost broker (exit 1)."""
    from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError
    from aiohttp import web

    from worker_sdk.amqp import AmqpBroker
    from worker_sdk.urls import redact

    from .gateway import ALLOWED_UPDATES, TelegramGateway
    from .limits import Rates

    bot = make_bot(settings)
    broker = AmqpBroker(config.amqp_url, name="cloudbunch-telegram", connect_timeout=10.0)
    rates = Rates(bot=settings["rate_bot"], chat=settings["rate_chat"],
                  group=settings["rate_group"], burst=settings["burst"])
    gateway = TelegramGateway(bot, broker, config.namespace, rates=rates)
    runner: web.AppRunner | None = None
    polling: asyncio.Task[Any] | None = None
    try:
        try:
            me = await bot.get_me()
        except TelegramUnauthorizedError:
            raise ConfigError(f"the Bot API refused {TOKEN_ENV} (unauthorized): copy the "
                              "token again from @BotFather") from None
        except TelegramNetworkError as exc:
            raise ConfigError(f"cannot reach the Bot API at {settings['api_url']} "
                              f"({exc.message}); check --api-url or the network") from None
        await broker.connect()
        await gateway.start()
        if settings["webhook_url"]:
            runner = await _start_webhook(gateway, settings)
            mode = f"webhook {settings['webhook_url']}"
        else:
            # Telegram refuses getUpdates while a webhook is set.
            await bot.delete_webhook(drop_pending_updates=False)
            # One update at a time: its offset is confirmed only after it was forwarded.
            polling = asyncio.create_task(gateway.dispatcher.start_polling(
                bot, polling_timeout=settings["polling_timeout"], handle_as_tasks=False,
                allowed_updates=ALLOWED_UPDATES, handle_signals=False,
                close_bot_session=False))
            mode = "long polling"
        print(f"cloudbunch telegram: bot @{me.username} on {mode} (namespace "
              f"{config.namespace!r}, RabbitMQ {redact(config.amqp_url)})",
              file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        waits = {asyncio.create_task(stop.wait()),
                 asyncio.create_task(broker.wait_lost())}
        if polling is not None:
            waits.add(polling)
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            if task is not polling:
                task.cancel()
        if polling is not None and polling in done:
            polling.result()  # raises what stopped it
            print("cloudbunch telegram: polling stopped", file=sys.stderr)
            return 1
        if not stop.is_set():
            print("cloudbunch telegram: giving up: the RabbitMQ connection could not be "
                  "restored; exiting so a supervisor restarts it", file=sys.stderr)
            return 1
        return 0
    finally:
        if polling is not None and not polling.done():
            with contextlib.suppress(Exception):
                await gateway.dispatcher.stop_polling()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(polling, 5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(gateway.stop(), 5.0)
        if runner is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.cleanup(), 3.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.close(), 2.0)
        with contextlib.suppress(Exception):
            await bot.session.close()


async def _start_webhook(gateway: Any, settings: Mapping[str, Any]) -> Any:
    """Serve the webhook (answering only after an update was forwarded) and register it."""
    from aiogram.webhook.aiohttp_server import SimpleRequestHandler
    from aiohttp import web

    from .gateway import ALLOWED_UPDATES

    app = web.Application()
    path = urlsplit(settings["webhook_url"]).path or "/"
    SimpleRequestHandler(gateway.dispatcher, gateway.bot, handle_in_background=False,
                         secret_token=settings["secret"]).register(app, path=path)

    async def health(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/healthz", health)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings["listen_host"], settings["listen_port"])
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {settings['listen_host']}:"
                          f"{settings['listen_port']}: {exc.strerror}; choose another "
                          "--listen-port or CLOUDBUNCH_TELEGRAM_LISTEN_PORT") from None
    await gateway.bot.set_webhook(settings["webhook_url"], secret_token=settings["secret"],
                                  allowed_updates=ALLOWED_UPDATES, drop_pending_updates=False)
    return runner
