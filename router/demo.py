"""``cloudbunch demo``: the pizza bot (``demo_flow``), a router and a terminal chat."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

from worker_sdk import wire
from worker_sdk.errors import BrokerUnavailable, StoreUnavailable
from worker_sdk.quick_replies import plain_text

from .config import RouterConfig
from .demo_flow import IdleTimes
from .engine import Engine

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
    while True:
        try:
            line = await asyncio.to_thread(input, "you> ")
        except EOFError:
            return
        yield line, False


def _show(notice: wire.Notice) -> str:
    if notice.type == "output":
        return f"bot> {plain_text(notice.payload)}"
    if notice.type == "unhandled":
        return "bot> (nobody understood that)"
    if notice.type == "end":
        return "bot> (conversation over: the next message starts a new one)"
    error = notice.error or wire.ErrorInfo("error")
    return f"bot> (error {error.code}: {error.message})"


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
            print(f"cloudbunch demo: cannot read script {script!r}: {exc.strerror}",
                  file=sys.stderr)
            return 1
    engine = await choose_engine(config, mode)
    session = f"demo-{secrets.token_hex(4)}"
    turns = 0
    busy = 0.0
    turn = asyncio.Lock()
    async with engine:
        shower = asyncio.create_task(_show_unasked(engine, session, turn))
        async for line, echo in _lines(script):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            if echo:
                print(f"you> {text}")
            if text == "/quit":
                break
            if text.startswith("/wait"):
                # Silence: what the bot says meanwhile (an idle timer's) is printed as it comes.
                try:
                    await asyncio.sleep(float(text.removeprefix("/wait").strip() or "1"))
                except ValueError:
                    print("demo: /wait takes a number of seconds, e.g. /wait 5")
                continue
            if text == "/stack":
                rec = await engine.record(session)
                frames = [f"{f.service}{'' if f.state is None else ' ' + repr(f.state)}"
                          for f in (rec.stack if rec else [])]
                print("stack: " + (" > ".join(frames) if frames else "(empty)"))
                continue
            started = time.perf_counter()
            async with turn:
                notices = await engine.converse(session, None if text == "/end" else text,
                                                end=text == "/end")
            busy += time.perf_counter() - started
            turns += 1
            for notice in notices:
                print(_show(notice), flush=True)
        shower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await shower
        await engine.converse(session, None, end=True)
    if turns:
        print(f"demo: {turns} messages in {busy:.2f} s "
              f"({busy / turns * 1000:.1f} ms per message round trip)")
    return 0


def _safe(url: str) -> str:
    from worker_sdk.amqp import redact

    return redact(url)
