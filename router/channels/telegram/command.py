"""``cloudbunch telegram``: its options and its main function (router/cli.py only registers it).

The bot token is read from ``CLOUDBUNCH_TELEGRAM_TOKEN`` only (an option would show it in
the process list) and is never logged: a filter masks it in every log line of the process.
Every option also reads an environment variable; the connection settings are the usual
``CLOUDBUNCH_*`` ones, shared with the router.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import click

from worker_sdk.errors import ConfigError
from worker_sdk.settings import Declaration, Settings, SettingsBase, setting
from worker_sdk.shutdown import close_all, stop_on_signals, until_stopped

from ...cli import is_verbose, run_async, settings_options

log = logging.getLogger(__name__)

TOKEN_ENV = "CLOUDBUNCH_TELEGRAM_TOKEN"
SECRET_ENV = "CLOUDBUNCH_TELEGRAM_WEBHOOK_SECRET"


def _http_url(value: Any, decl: Declaration) -> None:
    if urlsplit(str(value)).scheme not in ("http", "https"):
        raise ConfigError(f"{decl.where} must be an http:// or https:// URL, not {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TelegramSettings(SettingsBase):
    """The Telegram gateway's own settings (variables ``CLOUDBUNCH_TELEGRAM_*``)."""

    env_prefix: ClassVar[str] = "CLOUDBUNCH_TELEGRAM_"

    api_url: str = setting("https://api.telegram.org", "the Bot API server (a local Bot API "
                           "server, or a test double)", metavar="URL", check=_http_url)
    webhook_url: str | None = setting(None, "receive updates on this public HTTPS URL "
                                      "instead of long polling", metavar="URL",
                                      check=_http_url)
    listen_host: str = setting("127.0.0.1", "address the webhook server listens on (behind "
                               "the HTTPS proxy)", metavar="HOST")
    listen_port: int = setting(8443, "port the webhook server listens on", metavar="PORT",
                               minimum=1, maximum=65535)
    polling_timeout: int = setting(30, "how long one long-polling request waits for updates",
                                   metavar="SECONDS", minimum=1)
    rate_bot: float = setting(30.0, "messages per second the whole bot sends at most "
                              "(Telegram: about 30)", metavar="PER_SECOND", minimum=0,
                              above=True)
    rate_chat: float = setting(1.0, "messages per second to one chat (Telegram: about 1)",
                               metavar="PER_SECOND", minimum=0, above=True)
    rate_group: float = setting(0.333, "messages per second to one group "
                                "(Telegram: 20 a minute)", metavar="PER_SECOND", minimum=0,
                                above=True)
    burst: int = setting(3, "messages one chat may get at once before its rate applies",
                         metavar="N", minimum=1)


def telegram_settings(options: Mapping[str, Any], env: Mapping[str, str] | None = None
                      ) -> dict[str, Any]:
    """The options from ``options`` (None: not given), else the environment, else the
    defaults, plus ``token`` and ``secret``; one clear error for a bad or missing value."""
    env = os.environ if env is None else env
    given = {k: v for k, v in options.items() if v is not None}
    out = dataclasses.asdict(TelegramSettings.from_env(env, **given))
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


@click.command("telegram", help="Connect a Telegram bot to CloudBunch: long polling, or a "
               "webhook with --webhook-url. The bot token is read from "
               "CLOUDBUNCH_TELEGRAM_TOKEN only. Needs the 'telegram' extra (pip install "
               "'cloudbunch[telegram]'). SIGTERM or SIGINT stops it.",
               short_help="Run the Telegram gateway (bot token in CLOUDBUNCH_TELEGRAM_TOKEN).")
@settings_options(TelegramSettings, name="telegram")
@settings_options(Settings, only=("amqp_url", "namespace", "partitions"), name="servers")
def command(telegram: TelegramSettings, servers: Settings) -> None:
    """The ``telegram`` command: serve until SIGTERM or SIGINT."""
    settings = telegram_settings(dataclasses.asdict(telegram))
    try:
        import aiogram  # noqa: F401
    except ImportError:
        raise ConfigError("the Telegram gateway needs aiogram 3: pip install "
                          "'cloudbunch[telegram]'") from None
    mask_token_in_logs(settings["token"])
    if not is_verbose():
        # aiogram logs every handled update at INFO; our own lines say what matters.
        logging.getLogger("aiogram.event").setLevel(logging.WARNING)
    run_async(serve(servers, settings))


def make_bot(settings: Mapping[str, Any]) -> Any:
    """An aiogram Bot for the configured Bot API server."""
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    session = AiohttpSession(api=TelegramAPIServer.from_base(settings["api_url"].rstrip("/")))
    return Bot(settings["token"], session=session)


async def serve(config: Settings, settings: Mapping[str, Any], *,
                ready: asyncio.Event | None = None) -> int:
    """Run one gateway on RabbitMQ until SIGTERM/SIGINT (exit 0) or a lost broker (exit 1)."""
    from aiogram.exceptions import TelegramNetworkError, TelegramUnauthorizedError
    from aiohttp import web

    from worker_sdk.amqp import AmqpBroker
    from worker_sdk.urls import redact

    from .gateway import ALLOWED_UPDATES, TelegramGateway
    from .limits import Rates

    bot = make_bot(settings)
    broker = AmqpBroker(config.amqp_url, name="cloudbunch-telegram")
    rates = Rates(bot=settings["rate_bot"], chat=settings["rate_chat"],
                  group=settings["rate_group"], burst=settings["burst"])
    gateway = TelegramGateway(bot, broker, config.namespace, rates=rates,
                              partitions=config.partitions)
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
        stop = stop_on_signals()
        if ready is not None:
            ready.set()
        # Shielded: the polling task is stopped in order below, not cancelled here.
        also = () if polling is None else (asyncio.shield(polling),)
        stopped = await until_stopped(stop, broker.wait_lost(), *also)
        if polling is not None and polling.done():
            polling.result()  # raises what stopped it
            print("cloudbunch telegram: polling stopped", file=sys.stderr)
            return 1
        if not stopped:
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
        await close_all((gateway.stop, 5.0), (None if runner is None else runner.cleanup, 3.0),
                        (broker.close, 2.0), (bot.session.close, None))


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
