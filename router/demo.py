"""``cloudbunch demo``: the pizza bot (``demo_flow``), a router and a terminal chat."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

from worker_sdk import wire
from worker_sdk.errors import BrokerUnavailable, ConfigError
from worker_sdk.urls import redact

from .channels.base import render
from .config import RouterConfig
from .demo_flow import IdleTimes
from .engine import Engine
from .store import StoreUnavailable

DEFAULT_SCRIPT = Path(__file__).resolve().with_name("demo_script.txt")

HELP = ("(type a message; /stack shows the session's stack, /wait S stays silent S seconds, "
        "/end ends it, /quit leaves)")


async def _answers(url: str, default_port: int) -> bool:
    """Whether something listens at the URL's host and port (a quick probe, 2 s at most)."""
    parsed = urlparse(url)
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parsed.hostname or "127.0.0.1", parsed.port or default_port),
            2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _lines(script: str | None) -> AsyncIterator[tuple[str, bool]]:
    """The person's lines, and whether each should be echoed (not typed at a terminal)."""
    if script is not None and script != "-":
        with open(script, encoding="utf-8") as fh:
            content = fh.read().splitlines()
        for line in content:
            yield line, True
        return
    if script == "-" or not sys.stdin.isatty():
        piped = sys.stdin.read().splitlines()
        if script is None and not any(line.strip() for line in piped):
            # Nothing piped in (CI, `< /dev/null`): play the example conversation.
            print(f"demo: no input on stdin; playing {DEFAULT_SCRIPT}", flush=True)
            piped = DEFAULT_SCRIPT.read_text(encoding="utf-8").splitlines()
        for line in piped:
            yield line, True
        return
    print(HELP)
    async for line in _typed("you> "):
        yield line, False


async def _typed(prompt: str) -> AsyncIterator[str]:
    """Lines typed at the terminal, read by a daemon thread.

    Not ``asyncio.to_thread``: a thread of the default executor blocked in ``input()`` keeps
    the event loop from closing, so Ctrl-C would wait for the next Enter. A daemon thread
    does not hold up the exit.
    """
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    wanted = threading.Semaphore(0)

    def read() -> None:
        while True:
            wanted.acquire()
            try:
                line: str | None = input(prompt)
            except (EOFError, OSError, ValueError):
                line = None
            loop.call_soon_threadsafe(lines.put_nowait, line)
            if line is None:
                return

    threading.Thread(target=read, name="cloudbunch-demo-input", daemon=True).start()
    while True:
        wanted.release()  # prompt only once the previous answer has been printed
        line = await lines.get()
        if line is None:
            return
        yield line


def _show(notice: wire.Notice) -> str:
    return f"bot> {render(notice).text}"


async def choose_engine(config: RouterConfig, mode: str = "auto") -> Engine:
    """The pizza bot's engine: on RabbitMQ and Redis when they answer (``mode`` auto), or
    must (real), else (or when ``mode`` is embedded) in memory. Says which on stdout."""
    from .demo_flow import SERVICES

    store = None
    if mode != "embedded" and await _answers(config.amqp_url, 5672):
        from .redis_store import RedisStore

        store = RedisStore(config.redis_url, config.namespace)
        try:
            await store.ping()
        except StoreUnavailable:
            await store.close()
            store = None
    if mode == "real" and store is None:
        raise BrokerUnavailable(f"RabbitMQ ({_safe(config.amqp_url)}) or Redis "
                                f"({_safe(config.redis_url)}) does not answer; start them "
                                "or run without --real to use the embedded engine")
    if store is not None:
        from worker_sdk.amqp import AmqpBroker

        engine = Engine(SERVICES, config, store=store, broker=AmqpBroker(
            config.amqp_url, config.queue_type, name="cloudbunch-demo"))
        print(f"demo: using RabbitMQ at {_safe(config.amqp_url)} and Redis at "
              f"{_safe(config.redis_url)} (namespace {config.namespace!r})", flush=True)
    else:
        engine = Engine(SERVICES, config)
        why = "as asked" if mode == "embedded" else "RabbitMQ or Redis did not answer"
        print(f"demo: using the embedded in-memory engine ({why})", flush=True)
    return engine


async def _show_unasked(engine: Engine, session: str, turn: asyncio.Lock) -> None:
    """Print what the bot says without being asked (an idle timer's reminder), between the
    person's messages."""
    while True:
        await engine.wait_notices(session)
        async with turn:  # a message's own notices are taken by its converse()
            notices = engine.take(session)
        for notice in notices:
            print(f"\n{_show(notice)}", flush=True)


async def run_demo(config: RouterConfig, *, mode: str = "auto", script: str | None = None,
                   idle: IdleTimes | None = None) -> int:
    """Chat with the pizza bot; ``mode`` is auto, embedded or real; ``idle`` changes how long
    the bot waits on a silent person."""
    from . import demo_flow

    if idle is not None:
        demo_flow.IDLE.remind_after = idle.remind_after
        demo_flow.IDLE.give_up_after = idle.give_up_after
    if script is not None and script != "-":
        try:
            open(script, encoding="utf-8").close()
        except OSError as exc:
            raise ConfigError(f"cannot read script {script!r}: {exc.strerror}") from None
    engine = await choose_engine(config, mode)
    session = f"demo-{secrets.token_hex(4)}"
    latencies: list[float] = []
    turn = asyncio.Lock()
    async with engine:
        shower = asyncio.create_task(_show_unasked(engine, session, turn))
        # A subscription of our own sees when each notice arrives: the latency a person sees
        # is from sending a message to the arrival of the last notice its chain produced.
        arrivals: dict[str, float] = {}
        watch = asyncio.create_task(_watch(engine, session, arrivals))
        try:
            async for line, echo in _lines(script):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                if echo:
                    print(f"you> {text}")
                if text == "/quit":
                    break
                if text.startswith("/wait"):
                    # Silence: what the bot says meanwhile (an idle timer's) is printed as it
                    # comes.
                    try:
                        await asyncio.sleep(float(text.removeprefix("/wait").strip() or "1"))
                    except ValueError:
                        print("demo: /wait takes a number of seconds, e.g. /wait 5")
                    continue
                if text == "/stack":
                    print(await _stack(engine, session))
                    continue
                sent = time.perf_counter()
                async with turn:
                    notices = await engine.converse(session, None if text == "/end" else text,
                                                    end=text == "/end")
                if notices:
                    latencies.append(max(arrivals.pop(n.id, sent) for n in notices) - sent)
                for notice in notices:
                    print(_show(notice), flush=True)
            shower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shower
            await engine.converse(session, None, end=True)
        finally:
            shower.cancel()
            watch.cancel()
    print(speed_line(latencies), flush=True)
    return 0


async def _watch(engine: Engine, session: str, arrivals: dict[str, float]) -> None:
    async for notice in engine.client.session_notices(session):
        arrivals.setdefault(notice.id, time.perf_counter())


async def _stack(engine: Engine, session: str) -> str:
    rec = await engine.record(session)
    frames = [f"{f.service}{'' if f.state is None else ' ' + repr(f.state)}"
              for f in (rec.stack if rec else [])]
    return "stack: " + (" > ".join(frames) if frames else "(empty)")


def speed_line(latencies: list[float]) -> str:
    """What the demo measured: per message, the time from sending it to its last notice."""
    if not latencies:
        return "demo: no message answered"
    ms = sorted(x * 1000 for x in latencies)
    return (f"demo: {len(ms)} messages answered; from sending a message to its last notice "
            f"took {statistics.median(ms):.1f} ms at the median, {ms[-1]:.1f} ms at most")


def _safe(url: str) -> str:
    return redact(url)
