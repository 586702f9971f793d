"""The ``cloudbunch`` command: router, worker, demo, session (show, history, export, delete,
list), replay, purge, and whatever other modules register.

Built on click: every option of a setting comes from its one declaration (see
:mod:`worker_sdk.settings`) through :func:`settings_options`, which also reads the setting's
``CLOUDBUNCH_*`` variable (click's ``envvar=``) and shows variable and default in ``--help``.

Adding a subcommand from another module takes one line here: write a ``click.Command`` in
your module, for example::

    # router/channels/web.py
    import click
    from router.cli import settings_options, run_async
    from router.config import ServerSettings

    @click.command(help="Serve the web chat.")
    @settings_options(ServerSettings, only=("amqp_url", "namespace"))
    @click.option("--port", type=int, default=8080, show_default=True)
    def command(config: ServerSettings, port: int) -> None:
        run_async(serve(config, port))

and add its import path to :data:`COMMANDS` (``"web": "router.channels.web:command"``). It is
imported only when used (or listed by ``--help``). Every command then also accepts ``-v``,
and its expected failures (any :class:`~worker_sdk.errors.CloudBunchError`, a bad option)
print one line, ``cloudbunch web: what went wrong``, and exit 1 (2 for a bad option); a
command returns an exit code through :func:`run_async` or ``ctx.exit(code)``.

The logging configuration is installed here and nowhere else.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import logging
import os
import sys
import time
from argparse import Namespace
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from worker_sdk.amqp_connect import CONNECT_TIMEOUT
from worker_sdk.errors import CloudBunchError, ConfigError
from worker_sdk.logs import configure as configure_logging
from worker_sdk.service import run_event_loop
from worker_sdk.settings import (
    Declaration,
    Settings,
    SettingsBase,
    WorkerSettings,
    declarations,
)
from worker_sdk.shutdown import close_all, stop_on_signals, until_stopped

from .config import RouterConfig, ServerSettings

if TYPE_CHECKING:
    from .core import Timer
    from .probes import ProcessOptions
    from .redis_store import RedisStore

log = logging.getLogger("router.cli")

COMMANDS: dict[str, str] = {
    "router": "router.cli:router_command",
    "worker": "router.cli:worker_command",
    "demo": "router.cli:demo_command",
    "session": "router.cli:session_group",
    "purge": "router.cli:purge_command",
    "replay": "router.cli:replay_command",
    "web": "router.channels.web.command:command",
    "telegram": "router.channels.telegram.command:command",
    "status": "router.cli:status_command",
}
"""Every subcommand, as ``name: "module:attribute"`` of a ``click.Command``, loaded lazily."""

_VERBOSE = "cloudbunch.verbose"
F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------------- the machinery


class Failed(Exception):
    """An expected failure, already worded for a person, of the command named ``path``."""

    def __init__(self, path: str, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.code = code


def _set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value:
        return
    ctx.find_root().meta[_VERBOSE] = True
    logging.getLogger().setLevel(logging.DEBUG)
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.NOTSET)


def _verbose_option() -> click.Option:
    return click.Option(["-v", "--verbose"], is_flag=True, expose_value=False,
                        callback=_set_verbose, help="Log debug details.")


def quiet_logs() -> None:
    """Log warnings only, unless ``-v`` was given: for commands a person reads (demo, tools)."""
    if not is_verbose():
        logging.getLogger().setLevel(logging.WARNING)


def is_verbose(ctx: click.Context | None = None) -> bool:
    """Whether ``-v`` was given (before or after the subcommand)."""
    ctx = ctx or click.get_current_context()
    return bool(ctx.find_root().meta.get(_VERBOSE))


class CommandGroup(click.Group):
    """A group whose subcommands load lazily, all take ``-v``, and fail in one line."""

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any
                 ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy: Mapping[str, str] = lazy if lazy is not None else {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy:
            module_name, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module_name), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        if command is not None and not any(p.name == "verbose" for p in command.params):
            command.params.append(_verbose_option())
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        name = click.utils.make_str(args[0]) if args else ""
        if args and self.get_command(ctx, name) is None and not name.startswith("-"):
            close = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            ctx.fail(f"no such command {name!r}.{hint}")
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CloudBunchError as exc:
            sub = ctx.invoked_subcommand
            raise Failed(f"{ctx.command_path} {sub}" if sub else ctx.command_path,
                         str(exc)) from None


def _click_type(decl: Declaration) -> click.ParamType:
    if decl.choices is not None:
        return click.Choice(decl.choices)
    if decl.kind is int:
        return click.INT
    return click.FLOAT if decl.kind is float else click.STRING


def settings_options(cls: type[SettingsBase], *, only: Iterable[str] | None = None,
                     exclude: Iterable[str] = (), fixed: Mapping[str, Any] | None = None,
                     name: str = "config") -> Callable[[F], F]:
    """Add one option per declared setting of ``cls`` (or those in ``only``, not in
    ``exclude``) and call the command with ``config`` (or ``name``), an instance of ``cls``,
    in their place.

    ``fixed`` gives settings a value the person cannot change (the demo's root, say).
    Settings left out take their default. A bad value is a one-line error naming the option
    and the variable.
    """
    chosen = [d for d in declarations(cls) if (only is None or d.name in only)
              and d.name not in exclude and d.name not in (fixed or {})]
    names = [d.name for d in chosen]
    target = name

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names}
            values = {k: v for k, v in values.items() if v is not None} | dict(fixed or {})
            return fn(*args, **{target: cls(**values)}, **kwargs)

        command = wrapper
        for decl in reversed(chosen):
            if decl.kind is bool:
                command = click.option(
                    decl.option, decl.name, is_flag=True, default=decl.default,
                    envvar=decl.env, show_envvar=True, help=decl.help)(command)
                continue
            command = click.option(
                decl.option, decl.name, envvar=decl.env, show_envvar=True,
                type=_click_type(decl), metavar=decl.metavar,
                default=None if decl.required else decl.default,
                show_default=not decl.required,
                help=decl.help + (" [required]" if decl.required else ""))(command)
        return command  # type: ignore[return-value]
    return decorate


def run_async(coro: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a command's coroutine on the event loop and exit with the code it returns."""
    click.get_current_context().exit(run_event_loop(coro))
    raise AssertionError("unreachable")  # ctx.exit raises


@click.group("cloudbunch", cls=CommandGroup, lazy=COMMANDS, context_settings={
    "help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_verbose,
              help="Log debug details (also accepted after the subcommand).")
@click.version_option(metadata.version("cloudbunch"), "-V", "--version",
                      prog_name="cloudbunch", message="%(prog)s %(version)s")
def cli() -> None:
    """Stateless services, one hierarchical state machine.

    Every option of a setting also reads a CLOUDBUNCH_* environment variable (shown in each
    command's --help); an option given wins over the variable, which wins over the default.
    """


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cloudbunch`` console script; returns the exit code."""
    configure_logging(logging.INFO)
    # aio-pika and aiormq log every reconnect attempt; our own lines say what matters.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        try:
            code = cli.main(args=list(sys.argv[1:] if argv is None else argv),
                            prog_name="cloudbunch", standalone_mode=False)
        finally:
            sys.stdout.flush()
    except Failed as exc:
        print(f"{exc.path}: {exc.message}", file=sys.stderr)
        return exc.code
    except click.UsageError as exc:
        path = exc.ctx.command_path if exc.ctx is not None else "cloudbunch"
        hint = f" (see `{path} --help`)" if exc.ctx is not None else ""
        print(f"{path}: {_lowercase_first(exc.format_message())}{hint}", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        print(f"cloudbunch: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except (KeyboardInterrupt, click.Abort):
        return 130
    except BrokenPipeError:
        # The reader went away (`cloudbunch demo | head`) before the last flush: stop quietly
        # with 1, as click does when it happens earlier. Python would report the failed flush
        # again at exit; point stdout elsewhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return code if isinstance(code, int) else 0


def _lowercase_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# ---------------------------------------------------------------------------- commands


def _process_options(fn: F) -> F:
    """--metrics-port and --log-format (read, with their variables, by router.probes)."""
    fn = click.option("--metrics-port", metavar="PORT",
                      help="serve /metrics, /healthz and /readyz on this port  [env var: "
                           "CLOUDBUNCH_METRICS_PORT; default: off]")(fn)
    return click.option("--log-format", metavar="FORMAT",
                        help="'text' (key=value) or 'json' (one object a line)  [env var: "
                             "CLOUDBUNCH_LOG_FORMAT; default: text]")(fn)  # type: ignore[return-value]


def _process(metrics_port: str | None, log_format: str | None) -> ProcessOptions:
    from .probes import process_options

    ops = process_options(Namespace(metrics_port=metrics_port, log_format=log_format))
    configure_logging(logging.DEBUG if is_verbose() else logging.INFO, ops.log_format)
    return ops


@click.command("router", help="Run one router replica. Any number may run at once. SIGTERM "
               "or SIGINT stops it cleanly within 10 seconds.", short_help="Run one router "
               "replica.")
@settings_options(RouterConfig)
@_process_options
def router_command(config: RouterConfig, metrics_port: str | None,
                   log_format: str | None) -> None:
    ops = _process(metrics_port, log_format)
    run_async(run_router(config, metrics_port=ops.metrics_port))


@click.command("worker", help="Serve one or more services (each a worker_sdk.Service named "
               "as MODULE:ATTR, e.g. router.demo_flow:menu) until SIGTERM or SIGINT.",
               short_help="Serve services: cloudbunch worker MODULE:ATTR ...")
@click.argument("services", nargs=-1, required=True, metavar="MODULE:ATTR...")
@settings_options(WorkerSettings)
@_process_options
def worker_command(services: tuple[str, ...], config: WorkerSettings, metrics_port: str | None,
                   log_format: str | None) -> None:
    from worker_sdk.service import load_service, serve_main

    ops = _process(metrics_port, log_format)
    loaded = [load_service(spec) for spec in services]
    run_async(serve_main(loaded, config, connect_timeout=CONNECT_TIMEOUT,
                         metrics_port=ops.metrics_port))


@click.command("demo", help="Run a router, the example pizza services and a terminal chat in "
               "one process. Uses RabbitMQ and Redis when they answer, otherwise the "
               "embedded in-memory engine. Lines piped to stdin are played non-interactively; "
               "with nothing on stdin it plays the example conversation.",
               short_help="Chat with the example pizza bot (terminal, or --web).")
@click.option("--script", metavar="FILE", help="Read the person's lines from FILE instead of "
              "the terminal ('-' for stdin; piped stdin is read the same way).")
@click.option("--embedded", "mode", flag_value="embedded",
              help="Use the in-memory engine even if RabbitMQ and Redis answer.")
@click.option("--real", "mode", flag_value="real",
              help="Require RabbitMQ and Redis (fail if they do not answer).")
@click.option("--namespace", metavar="NS", envvar="CLOUDBUNCH_DEMO_NAMESPACE",
              show_envvar=True, default="cbdemo", show_default=True,
              help="Prefix of the demo's queues and keys (not CLOUDBUNCH_NAMESPACE, so the "
                   "demo never mixes with a deployment).")
@click.option("--web", is_flag=True,
              help="Chat in the browser instead of the terminal (serves the web chat).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              envvar="CLOUDBUNCH_WEB_PORT", show_envvar=True, metavar="PORT",
              help="With --web: the port.")
@click.option("--no-browser", is_flag=True,
              help="With --web: print the address without opening a browser.")
@click.option("--remind-after", type=click.FloatRange(0, 2_592_000, min_open=True),
              default=60.0, show_default=True, metavar="SECONDS",
              help="Silence after which a question is asked again.")
@click.option("--give-up-after", type=click.FloatRange(0, 2_592_000, min_open=True),
              default=900.0, show_default=True, metavar="SECONDS",
              help="Silence after which the order in progress is dropped.")
@settings_options(RouterConfig, exclude=("namespace",), fixed={"root": "pizza"})
def demo_command(script: str | None, mode: str | None, namespace: str, web: bool, port: int,
                 no_browser: bool, remind_after: float, give_up_after: float,
                 config: RouterConfig) -> None:
    import dataclasses

    from .demo import run_demo
    from .demo_flow import IdleTimes

    quiet_logs()
    config = dataclasses.replace(config, namespace=namespace)
    if web:
        from .channels.web.command import web_settings
        from .channels.web.demo import run_web_demo

        settings = web_settings({"port": port})
        run_async(run_web_demo(config, mode=mode or "auto", host=settings["host"],
                               port=settings["port"], open_browser=not no_browser))
    idle = IdleTimes(remind_after=remind_after, give_up_after=give_up_after)
    run_async(run_demo(config, mode=mode or "auto", script=script, idle=idle))


@click.group("session", cls=CommandGroup, help="Inspect sessions.")
def session_group() -> None:
    pass


@session_group.command("show", help="Print a session as stored in Redis: its stack, turn in "
                       "flight and waiting messages.")
@click.argument("session")
@settings_options(ServerSettings, only=("redis_url", "namespace"))
def session_show_command(session: str, config: ServerSettings) -> None:
    run_async(show_session(config, session))


@session_group.command("history", help="Print a session's history (the router records it "
                       "unless started with --history 0).",
                       short_help="Print a session's recorded turns as a transcript.")
@click.argument("session")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@click.option("--no-state", is_flag=True, help="Leave states out.")
@settings_options(ServerSettings, only=("redis_url", "namespace"))
def session_history_command(session: str, as_json: bool, no_state: bool,
                            config: ServerSettings) -> None:
    from . import sessions

    run_async(_with_store(config, lambda store: sessions.print_history(
        store, session, as_json=as_json, states=not no_state)))


@session_group.command("export", help="Write a session's history as a file that `cloudbunch "
                       "replay` and router.testing.replay read.",
                       short_help="Write a session's history to a file for replay.")
@click.argument("session")
@click.option("-o", "--output", metavar="FILE", help="The file (default: stdout).")
@settings_options(ServerSettings, only=("redis_url", "namespace"))
def session_export_command(session: str, output: str | None, config: ServerSettings) -> None:
    from . import sessions

    run_async(_with_store(config, lambda store: sessions.write_export(
        store, session, config.namespace, output)))


@session_group.command("delete", help="Delete a session at once: its stack, waiting messages, "
                       "timers, outbox, dedup memory and history.",
                       short_help="Delete a session and everything of it.")
@click.argument("session")
@settings_options(ServerSettings, only=("redis_url", "namespace"))
def session_delete_command(session: str, config: ServerSettings) -> None:
    from . import sessions

    run_async(_with_store(config, lambda store: sessions.delete(store, session)))


@session_group.command("list", help="List sessions with their stack and last activity, found "
                       "by an incremental SCAN (never one blocking call).",
                       short_help="List a sample of sessions, most recently active first.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True,
              metavar="N", help="At most N sessions.")
@settings_options(ServerSettings, only=("redis_url", "namespace"))
def session_list_command(limit: int, config: ServerSettings) -> None:
    from . import sessions

    run_async(_with_store(config, lambda store: sessions.print_list(
        store, limit, int(time.time() * 1000))))


@click.command("replay", help="Run the client messages of exported sessions through the given "
               "services in memory (the real core, the recorded times) and print every turn "
               "that acts differently from the recording. Exit 0 when nothing differs, 1 "
               "otherwise.", short_help="Replay exported sessions against service code.")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--service", "services", multiple=True, required=True, metavar="MODULE:ATTR",
              help="A service to run (repeat for each service).")
@click.option("--root", metavar="SERVICE", help="The root service (default: the recorded one).")
@click.option("--ignore-state", is_flag=True,
              help="Accept turns that differ only in the state they save.")
def replay_command(files: tuple[str, ...], services: tuple[str, ...], root: str | None,
                   ignore_state: bool) -> None:
    from worker_sdk.service import load_service

    from . import history, replay

    loaded = [load_service(spec) for spec in services]
    try:
        code = run_event_loop(replay.run(list(files), loaded, root=root,
                                         ignore_state=ignore_state))
    except (history.BadExport, replay.ReplayError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    click.get_current_context().exit(code)


@click.command("status", help="Show every service queue's depth and consumers, the routers' "
               "queues and the dead letters' reasons. Exit status 1 when a queue has messages "
               "and no consumer, or dead letters are growing.",
               short_help="One screen for an operator: queues, workers, dead letters.")
@click.option("--service", "service", multiple=True, metavar="NAME",
              help="A service whose queue to show (repeatable); the management API, when it "
                   "answers, lists them all.")
@click.option("--management-url", metavar="URL",
              help="RabbitMQ management API ('off' to skip)  [env var: "
                   "CLOUDBUNCH_MANAGEMENT_URL; default: http://HOST:15672 of the AMQP URL]")
@click.option("--metrics-url", "metrics_url", multiple=True, metavar="URL",
              help="A router's /metrics, for turns per second (repeatable).")
@click.option("--interval", type=float, default=1.0, show_default=True, metavar="SECONDS",
              help="Time between the two samples that show growth.")
@settings_options(Settings, only=("amqp_url", "namespace", "partitions"))
def status_command(service: tuple[str, ...], management_url: str | None,
                   metrics_url: tuple[str, ...], interval: float, config: Settings) -> None:
    from .status import run_status

    quiet_logs()
    args = Namespace(service=list(service), management_url=management_url,
                     metrics_url=list(metrics_url), interval=interval)
    run_async(run_status(config.amqp_url, config.namespace, args,
                         os.environ.get("CLOUDBUNCH_MANAGEMENT_URL"), config.partitions))


@click.command("purge", help="Delete a namespace's queues, exchanges and Redis keys: every "
               "queue of it the RabbitMQ management API lists, else those found by name (the "
               "shared queues, the gateways', every service and reply queue named in its "
               "sessions, by --service and by --queue), its two exchanges, and every key. "
               "Refuses while a router consumes the namespace.",
               short_help="Delete a namespace's queues and keys.")
@click.option("--service", "services", multiple=True, metavar="NAME",
              help="Also delete this service's queue (repeat for several).")
@click.option("--queue", "queues", multiple=True, metavar="NAME",
              help="Also delete this queue of the namespace, such as a frontend's own "
                   "(NS.client.web); repeat for several.")
@click.option("--management-url", metavar="URL",
              help="RabbitMQ management API, to list the namespace's queues ('off' to skip)  "
                   "[env var: CLOUDBUNCH_MANAGEMENT_URL; default: http://HOST:15672 of the "
                   "AMQP URL]")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@settings_options(ServerSettings)
def purge_command(services: tuple[str, ...], queues: tuple[str, ...],
                  management_url: str | None, yes: bool, config: ServerSettings) -> None:
    from .purge import purge
    from .status import management_url as choose_management_url

    quiet_logs()

    def confirm(plan: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise ConfigError(f"{plan}; pass --yes to confirm without a terminal")
        return click.confirm(f"{plan}. Delete them?", default=False)

    run_async(purge(config, services, confirm, queues=queues,
                    management_url=choose_management_url(
                        management_url, os.environ.get("CLOUDBUNCH_MANAGEMENT_URL"),
                        config.amqp_url)))


# ---------------------------------------------------------------------------- router, session


async def run_router(config: RouterConfig, *, metrics_port: int | None = None) -> int:
    """Run one replica until SIGTERM/SIGINT (exit 0) or until a server is lost (exit 1).

    With ``metrics_port``, serve /metrics, /healthz and /readyz on it.
    """
    from worker_sdk.amqp import AmqpBroker

    from .app import Router
    from .redis_store import RedisStore

    store = RedisStore(config.redis_url, config.namespace)
    broker = AmqpBroker(config.amqp_url, config.queue_type, name="cloudbunch-router",
                        connect_timeout=CONNECT_TIMEOUT)
    metrics = None
    if metrics_port is not None:
        from .metrics import RouterMetrics

        metrics = RouterMetrics(config.core())
    router = Router(config, broker, store, metrics=metrics)
    probes = None
    if metrics_port is not None:
        from .probes import start_router_probes

        probes = await start_router_probes(router, metrics_port)
    try:
        await store.connect()
        await broker.connect()
    except BaseException:
        await store.close()
        if probes is not None:
            await probes.close()
        raise
    stop = stop_on_signals()
    code = 0
    try:
        await router.start()
        print(f"cloudbunch router: consuming {router.ingress} and {router.replies} "
              f"(root {config.root!r})", file=sys.stderr, flush=True)
        if not await until_stopped(stop, router.wait_failed(), broker.wait_lost()):
            code = 1
            reason = router.failure or "the RabbitMQ connection could not be restored"
            print(f"cloudbunch router: giving up: {reason}; exiting so a supervisor restarts "
                  "it", file=sys.stderr)
    finally:
        await close_all((router.stop, 8.5))
        if probes is not None:
            await probes.close()
        await close_all((broker.close, 1.0), (store.close, None))
    return code


async def _with_store(config: ServerSettings,
                      action: Callable[[RedisStore], Awaitable[int]]) -> int:
    """Run a session tool on the namespace's store, closing it afterwards."""
    from .redis_store import RedisStore

    store = RedisStore(config.redis_url, config.namespace)
    try:
        await store.connect()
        return await action(store)
    finally:
        await store.close()


async def show_session(config: ServerSettings, session: str) -> int:
    """Print a session's stack, turn in flight, waiting and held messages."""
    from .core import CorruptRecord, Effect, IdleFired, Record
    from .redis_store import RedisStore

    store = RedisStore(config.redis_url, config.namespace)
    try:
        await store.connect()
        snap = await store.load(session)
        ttl = await store.ttl_ms(session)
    finally:
        await store.close()
    if snap.record is None:
        print(f"session {session!r}: no record in namespace {config.namespace!r} "
              "(never seen, or expired)")
        return 1
    try:
        rec = Record.decode(snap.record)
    except CorruptRecord as exc:
        print(f"session {session!r}: its stored record cannot be read ({exc}); delete its "
              "keys to let the session start afresh", file=sys.stderr)
        return 1
    print(f"session {session!r} (namespace {config.namespace!r}, version {snap.version}, "
          f"expires in {ttl / 1000:.0f} s)")
    print("stack (root first):" if rec.stack else "stack: empty")
    now_ms = time.time() * 1000
    for depth, frame in enumerate(rec.stack):
        print(f"  {depth}: {frame.service}  state={frame.state!r}")
        if frame.timer is not None:
            print(f"     {describe_timer(frame.timer, rec.last_client_ms, now_ms)}")
    if rec.turn is not None:
        t = rec.turn
        print(f"turn in flight: {t.id} event={t.event} depth={t.depth} attempt={t.attempt} "
              f"service={rec.stack[t.depth].service if t.depth < len(rec.stack) else '?'}")
        if rec.chain is not None:
            print(f"  for client message {rec.chain.origin!r} (notices to {rec.chain.reply_to})")
    else:
        print("turn in flight: none")
    print(f"waiting messages: {len(rec.waiting)}")
    for m in rec.waiting:
        if isinstance(m, IdleFired):
            print(f"  idle timer of frame {m.depth} ({m.seconds} s), fired")
            continue
        print(f"  {m.id}: {m.payload!r}" + (f" seq={m.seq}" if m.seq is not None else ""))
    if rec.held:
        print(f"held for seq (last accepted {rec.last_seq}): {len(rec.held)}")
        for h in rec.held:
            print(f"  {h.message.id}: seq={h.message.seq} {h.message.payload!r}")
    if snap.outbox:
        print(f"outbox (not yet confirmed published): {len(snap.outbox)}")
        for blob in snap.outbox:
            e = Effect.decode(blob)
            print(f"  {e.kind} -> {e.queue}")
    return 0


def describe_timer(timer: Timer, last_client_ms: int, now_ms: float) -> str:
    """One line about a frame's idle timer for ``session show``."""
    if timer.fired:
        return f"idle timer: {timer.seconds:g} s of silence, fired (its turn is queued or done)"
    due = timer.due_ms(last_client_ms)
    when = datetime.fromtimestamp(due / 1000, UTC).isoformat(timespec="milliseconds")
    return (f"idle timer: {timer.seconds:g} s of silence, fires at {when} "
            f"(in {max(0.0, (due - now_ms) / 1000):.1f} s, unless a message arrives)")


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy, so that COMMANDS resolve to one module.
    from router.cli import main as _main

    sys.exit(_main())
