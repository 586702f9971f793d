"""A minimal terminal frontend: send a person's lines to the router, print the notices.

    python -m examples.chat                                   # type messages, Ctrl-D to stop
    python -m examples.chat --script router/demo_script.txt # play a script

It speaks the wire contract directly (a client message to ``NS.ingress``, notices on a queue
of its own), so it also shows what a frontend in any language has to do. It reads
CLOUDBUNCH_AMQP_URL, CLOUDBUNCH_NAMESPACE and CLOUDBUNCH_QUEUE_TYPE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
from collections.abc import AsyncIterator

from router.channels.base import render
from worker_sdk import wire
from worker_sdk.amqp import AmqpBroker
from worker_sdk.broker import Delivery, Outgoing
from worker_sdk.errors import CloudBunchError
from worker_sdk.settings import Settings

# A chain that ends with a reply has no closing notice: stop waiting after this much quiet.
QUIET = 1.5


async def chat(settings: Settings, session: str, lines: AsyncIterator[str], *,
               quiet: float = QUIET, echo: bool = False) -> int:
    """Send each line as one client message and print its notices; 0 unless the session failed."""
    broker = AmqpBroker(settings.amqp_url, settings.queue_type, name="cloudbunch-chat")
    await broker.connect()
    own = f"{settings.namespace}.chat.{secrets.token_hex(6)}"
    notices: asyncio.Queue[wire.Notice] = asyncio.Queue()
    seen: set[str] = set()

    async def on_notice(delivery: Delivery) -> None:
        try:
            notice = wire.Notice.from_wire(wire.decode(delivery.body))
        except wire.BadBody:
            await delivery.ack()
            return
        await delivery.ack()
        if notice.id not in seen:  # notices may come twice; their id says so
            seen.add(notice.id)
            await notices.put(notice)

    status = 0
    try:
        await broker.declare_own(own, durable=False)
        await broker.consume(own, on_notice, prefetch=50)
        seq = 0
        async for line in lines:
            seq += 1
            if echo:
                print(f"> {line}")
            message = wire.ClientMessage(session=session, id=secrets.token_hex(8),
                                         reply_to=own, payload=line, seq=seq)
            body = wire.encode(message.to_wire())
            exchange = wire.exchange_names(settings.namespace)["ingress"]
            await broker.publish([Outgoing(wire.INGRESS_KEY, body, message.id,
                                           exchange=exchange)])
            while True:
                try:
                    notice = await asyncio.wait_for(notices.get(), quiet)
                except TimeoutError:
                    break
                print(f"  {render(notice).text}")
                if notice.type == "error" and (notice.error is None or
                                               notice.error.code != "invalid_message"):
                    status = 1
    finally:
        with contextlib.suppress(CloudBunchError, OSError):
            await broker.cancel(own)
            await broker.delete(own)
        await broker.close()
    return status


def script_lines(text: str) -> list[str]:
    """The messages of a script: one a line, without blank lines and '#' comments."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


async def _from_list(lines: list[str]) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def _typed() -> AsyncIterator[str]:
    # Read stdin in a thread: a blocking read would starve the connection's heartbeats.
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        if line.strip():
            yield line.strip()


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m examples.chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", help="a file of messages, one a line ('#' comments)")
    parser.add_argument("--session", default=f"chat:{secrets.token_hex(4)}",
                        help="the session id (default: a new one)")
    parser.add_argument("--quiet", type=float, default=QUIET,
                        help=f"seconds of silence that end a turn's output (default {QUIET})")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.script:
            with open(args.script, encoding="utf-8") as handle:
                lines = _from_list(script_lines(handle.read()))
        else:
            lines = _typed()
        return asyncio.run(chat(settings, args.session, lines, quiet=args.quiet,
                                echo=bool(args.script)))
    except (CloudBunchError, OSError) as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
