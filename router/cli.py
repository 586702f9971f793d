"""The ``cloudbunch`` command: router, worker, demo, session show.

Expected failures (a server not reachable, a bad option) print one line and exit 1; the
logging configuration is installed here and nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from worker_sdk.amqp_connect import CONNECT_TIMEOUT
from worker_sdk.errors import CloudBunchError, ConfigError
from worker_sdk.logs import configure as configure_logging
from worker_sdk.service import run_event_loop

from .config import ENV, RouterConfig, load_config
from .probes import ProcessOptions, add_process_options, process_options

if TYPE_CHECKING:
    from .core import Timer

log = logging.getLogger("router.cli")

ROUTER_OPTIONS: list[tuple[str, str, str]] = [
    ("amqp_url", "URL", "RabbitMQ URL (amqp:// or amqps://)"),
    ("redis_url", "URL", "Redis URL (redis://, rediss://, or redis+cluster://HOST:PORT,... "
                          "for a Redis Cluster)"),
    ("namespace", "NS", "prefix of every queue and key, so deployments can share servers"),
    ("root", "SERVICE", "service opened as the root of a new session (required)"),
    ("turn_timeout", "SECONDS", "wait for a reply this long before re-dispatching"),
    ("max_attempts", "N", "dispatches of one turn before it fails with 'timeout'"),
    ("max_depth", "N", "most frames on a session's stack"),
    ("session_ttl", "SECONDS", "idle sessions are forgotten after this long"),
    ("max_body", "BYTES", "largest message body accepted"),
    ("seq_hold", "SECONDS", "how long a message waits for the ones numbered before it"),
    ("queue_type", "TYPE", "'quorum' or 'classic', for every shared queue"),
    ("max_waiting", "N", "client messages a session may have waiting; more are refused"),
    ("history", "N", "history entries kept per session for `session history` and replay "
                     "(0: off)"),
]

def _add_router_options(p: argparse.ArgumentParser, *, only: Sequence[str] | None = None,
                        root_default: str | None = None) -> None:
    for name, metavar, text in ROUTER_OPTIONS:
        if only is not None and name not in only:
            continue
        default = root_default if name == "root" else RouterConfig.__dataclass_fields__[
            name].default
        shown = "required" if name == "root" and root_default is None else f"default {default}"
        p.add_argument("--" + name.replace("_", "-"), dest=name, metavar=metavar,
                       help=f"{text} [env {ENV[name]}; {shown}]")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not 0 < value <= 2_592_000:
        raise argparse.ArgumentTypeError(f"must be above 0 and at most 2592000 (30 days), "
                                         f"not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cloudbunch",
        description="Stateless services, one hierarchical state machine. Every option also "
                    "reads a CLOUDBUNCH_* environment variable (shown in each --help).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("router", help="run one router replica",
                       description="Run one router replica. Any number may run at once. "
                                   "SIGTERM or SIGINT stops it cleanly within 10 seconds.")
    _add_router_options(p)
    add_process_options(p)

    p = sub.add_parser("worker", help="run service workers: cloudbunch worker module:attr ...",
                       description="Serve one or more services (each a worker_sdk.Service "
                                   "named as module:attribute) until SIGTERM or SIGINT.")
    p.add_argument("services", nargs="+", metavar="MODULE:ATTR",
                   help="a Service object, e.g. router.demo_flow:menu")
    p.add_argument("--prefetch", type=_positive, default=None, metavar="N",
                   help="dispatches handled at once per service "
                        "[env CLOUDBUNCH_PREFETCH; default 16]")
    _add_router_options(p, only=("amqp_url", "namespace", "queue_type"))
    add_process_options(p)

    p = sub.add_parser("demo", help="chat with the example pizza bot in the terminal",
                       description="Run a router, the example pizza services and a terminal "
                                   "chat in one process. Uses RabbitMQ and Redis when they "
                                   "answer, otherwise the embedded in-memory engine.")
    p.add_argument("--script", metavar="FILE",
                   help="read the person's lines from FILE instead of the terminal "
                        "('-' for stdin; piped stdin is read the same way)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--embedded", action="store_true",
                      help="use the in-memory engine even if RabbitMQ and Redis answer")
    mode.add_argument("--real", action="store_true",
                      help="require RabbitMQ and Redis (fail if they do not answer)")
    p.add_argument("--web", action="store_true",
                   help="chat in the browser instead of the terminal (serves the web chat)")
    p.add_argument("--port", type=int, default=None, metavar="PORT",
                   help="with --web: the port [env CLOUDBUNCH_WEB_PORT; default 8080]")
    p.add_argument("--no-browser", action="store_true",
                   help="with --web: print the address without opening a browser")
    _add_router_options(p, only=[n for n, _, _ in ROUTER_OPTIONS
                                 if n not in ("root", "namespace")])
    p.add_argument("--namespace", dest="namespace", metavar="NS",
                   help="prefix of the demo's queues and keys [env CLOUDBUNCH_DEMO_NAMESPACE; "
                        "default cbdemo, so the demo never mixes with a deployment in 'cb']")
    p.add_argument("--remind-after", type=_positive_seconds, default=60.0, metavar="SECONDS",
                   help="silence after which a question is asked again [default 60]")
    p.add_argument("--give-up-after", type=_positive_seconds, default=900.0,
                   metavar="SECONDS", help="silence after which the order in progress is "
                                           "dropped [default 900]")

    p = sub.add_parser("web", help="serve the web chat: a page and a WebSocket per tab",
                       description="Run one web chat gateway replica (any number may run "
                                   "behind a load balancer). SIGTERM or SIGINT stops it.")
    from .channels.web.command import add_arguments as add_web_arguments

    add_web_arguments(p)

    p = sub.add_parser("telegram", help="run the Telegram gateway (bot token in "
                                        "CLOUDBUNCH_TELEGRAM_TOKEN)",
                       description="Connect a Telegram bot to CloudBunch: long polling, or a "
                                   "webhook with --webhook-url. Needs the 'telegram' extra "
                                   "(pip install 'cloudbunch[telegram]'). SIGTERM or SIGINT "
                                   "stops it.")
    from .channels.telegram.command import add_arguments as add_telegram_arguments

    add_telegram_arguments(p)

    p = sub.add_parser("session", help="inspect sessions", description="Inspect sessions.")
    ssub = p.add_subparsers(dest="session_command", metavar="SUBCOMMAND", required=True)
    ps = ssub.add_parser("show", help="print a session's stack, turn in flight and waiting "
                                      "messages", description="Print a session as stored in "
                                                              "Redis.")
    ps.add_argument("session", help="the session id, e.g. tg:42")
    _add_router_options(ps, only=("redis_url", "namespace"))
    ph = ssub.add_parser("history", help="print a session's recorded turns as a transcript",
                         description="Print a session's history (the router records it "
                                     "unless started with --history 0).")
    ph.add_argument("session", help="the session id, e.g. tg:42")
    ph.add_argument("--json", action="store_true", help="one JSON object per entry")
    ph.add_argument("--no-state", action="store_true", help="leave states out")
    _add_router_options(ph, only=("redis_url", "namespace"))
    pe = ssub.add_parser("export", help="write a session's history to a file for replay",
                         description="Write a session's history as a file that `cloudbunch "
                                     "replay` and router.testing.replay read.")
    pe.add_argument("session", help="the session id, e.g. tg:42")
    pe.add_argument("-o", "--output", metavar="FILE", help="the file (default: stdout)")
    _add_router_options(pe, only=("redis_url", "namespace"))
    pd = ssub.add_parser("delete", help="delete a session and everything of it",
                         description="Delete a session at once: its stack, waiting messages, "
                                     "timers, outbox, dedup memory and history.")
    pd.add_argument("session", help="the session id, e.g. tg:42")
    _add_router_options(pd, only=("redis_url", "namespace"))
    pl = ssub.add_parser("list", help="list a sample of sessions, most recently active first",
                         description="List sessions with their stack and last activity, "
                                     "found by an incremental SCAN (never one blocking call).")
    pl.add_argument("--limit", type=_positive, default=50, metavar="N",
                    help="at most N sessions (default 50)")
    _add_router_options(pl, only=("redis_url", "namespace"))

    p = sub.add_parser("replay", help="replay exported sessions against service code",
                       description="Run the client messages of exported sessions through the "
                                   "given services in memory (the real core, the recorded "
                                   "times) and print every turn that acts differently from "
                                   "the recording. Exit 0 when nothing differs, 1 otherwise.")
    p.add_argument("files", nargs="+", metavar="FILE", help="files of `cloudbunch session "
                                                            "export`")
    p.add_argument("--service", dest="services", action="append", required=True,
                   metavar="MODULE:ATTR", help="a service to run (repeat for each service)")
    p.add_argument("--root", metavar="SERVICE", help="the root service (default: the "
                                                     "recorded one)")
    p.add_argument("--ignore-state", action="store_true",
                   help="accept turns that differ only in the state they save")

    from .status import add_arguments as add_status_arguments

    p = sub.add_parser("status", help="one screen for an operator: queues, workers, dead "
                                      "letters; exit 1 when something needs a person",
                       description="Show every service queue's depth and consumers, the "
                                   "routers' queues and the dead letters' reasons. Exit "
                                   "status 1 when a queue has messages and no consumer, or "
                                   "dead letters are growing.")
    add_status_arguments(p)
    _add_router_options(p, only=("amqp_url", "namespace"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cloudbunch`` console script."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    if args.command in ("demo", "status"):
        level = logging.DEBUG if args.verbose else logging.WARNING
    try:
        ops = process_options(args)
    except CloudBunchError as exc:
        print(f"cloudbunch {args.command}: {exc}", file=sys.stderr)
        return 1
    configure_logging(level, ops.log_format)
    if not args.verbose:
        # aio-pika and aiormq log every reconnect attempt; our own lines say what matters.
        for name in ("aiormq", "aio_pika"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return _run(args, ops)
    except CloudBunchError as exc:
        print(f"cloudbunch {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _positive_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return _positive(raw)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"{name} {exc}") from None


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name, _, _ in ROUTER_OPTIONS}


def _run(args: argparse.Namespace, ops: ProcessOptions) -> int:
    if args.command == "router":
        config = load_config(_options(args))
        return run_event_loop(run_router(config, metrics_port=ops.metrics_port))
    if args.command == "worker":
        from worker_sdk.service import load_service, run_main
        from worker_sdk.settings import Settings

        services = [load_service(spec) for spec in args.services]
        base = load_config(_options(args) | {"root": "-"})
        settings = Settings(base.amqp_url, base.namespace, base.queue_type)
        prefetch = args.prefetch
        if prefetch is None:
            prefetch = _positive_env("CLOUDBUNCH_PREFETCH", 16)
        return run_main(services, settings, prefetch=prefetch,
                        connect_timeout=CONNECT_TIMEOUT, metrics_port=ops.metrics_port,
                        configure_logging=False)
    if args.command == "demo":
        from .demo import run_demo
        from .demo_flow import IdleTimes

        namespace = args.namespace or os.environ.get("CLOUDBUNCH_DEMO_NAMESPACE", "cbdemo")
        config = load_config(_options(args) | {"root": "pizza", "namespace": namespace})
        mode = "embedded" if args.embedded else "real" if args.real else "auto"
        if args.web:
            from .channels.web.command import web_settings
            from .channels.web.demo import run_web_demo

            web = web_settings({"port": args.port})
            return run_event_loop(run_web_demo(config, mode=mode, host=web["host"],
                                               port=web["port"],
                                               open_browser=not args.no_browser))
        idle = IdleTimes(remind_after=args.remind_after, give_up_after=args.give_up_after)
        return run_event_loop(run_demo(config, mode=mode, script=args.script, idle=idle))
    if args.command == "telegram":
        from .channels.telegram.command import run as run_telegram

        return run_telegram(vars(args), verbose=args.verbose)
    if args.command == "web":
        from .channels.web.command import run as run_web

        return run_web(vars(args))
    if args.command == "session":
        config = load_config(_options(args) | {"root": "-"})
        if args.session_command == "show":
            return run_event_loop(show_session(config, args.session))
        return run_event_loop(_session_tool(config, args))
    if args.command == "replay":
        from worker_sdk.service import load_service

        from . import history, replay

        services = [load_service(spec) for spec in args.services]
        try:
            return run_event_loop(replay.run(args.files, services, root=args.root,
                                             ignore_state=args.ignore_state))
        except (history.BadExport, replay.ReplayError, OSError) as exc:
            raise ConfigError(str(exc)) from None
    if args.command == "status":
        from .status import run_status

        config = load_config(_options(args) | {"root": "-"})
        return run_event_loop(run_status(config.amqp_url, config.namespace, args,
                                         os.environ.get("CLOUDBUNCH_MANAGEMENT_URL")))
    raise AssertionError(args.command)


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
        await store.ping()
        await broker.connect()
    except BaseException:
        await store.close()
        if probes is not None:
            probes[1].cancel()
            await probes[0].close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await router.start()
        print(f"cloudbunch router: consuming {router.ingress} and {router.replies} "
              f"(root {config.root!r})", file=sys.stderr, flush=True)
        waits = {asyncio.create_task(stop.wait()), asyncio.create_task(router.wait_failed()),
                 asyncio.create_task(broker.wait_lost())}
        _done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        if not stop.is_set():
            code = 1
            reason = router.failure or "the RabbitMQ connection could not be restored"
            print(f"cloudbunch router: giving up: {reason}; exiting so a supervisor restarts "
                  "it", file=sys.stderr)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(router.stop(), 8.5)
        if probes is not None:
            probes[1].cancel()
            await probes[0].close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(broker.close(), 1.0)
        with contextlib.suppress(Exception):
            await store.close()
    return code


async def _session_tool(config: RouterConfig, args: argparse.Namespace) -> int:
    from . import sessions
    from .redis_store import RedisStore

    store = RedisStore(config.redis_url, config.namespace)
    try:
        await store.ping()
        match args.session_command:
            case "history":
                return await sessions.print_history(store, args.session, as_json=args.json,
                                                    states=not args.no_state)
            case "export":
                return await sessions.write_export(store, args.session, config.namespace,
                                                   args.output)
            case "delete":
                return await sessions.delete(store, args.session)
            case _:
                return await sessions.print_list(store, args.limit, int(time.time() * 1000))
    finally:
        await store.close()


async def show_session(config: RouterConfig, session: str) -> int:
    """Print a session's stack, turn in flight, waiting and held messages."""
    from .core import CorruptRecord, Effect, IdleFired, Record
    from .redis_store import RedisStore

    store = RedisStore(config.redis_url, config.namespace)
    try:
        await store.ping()
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
    sys.exit(main())
