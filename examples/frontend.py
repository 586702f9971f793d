"""The README's frontend, complete: send a person's messages, print each turn's notices.

    .venv/bin/python -m examples.frontend tg:42 hi ada help bye     # one turn per message

It needs a router and the workers of its flow (README, "Run it for real"), and reads
CLOUDBUNCH_AMQP_URL, CLOUDBUNCH_NAMESPACE and CLOUDBUNCH_QUEUE_TYPE like every party.
"""

from __future__ import annotations

import asyncio
import sys

from worker_sdk import Client, CloudBunchError, Notice, Settings


def show(notice: Notice) -> str:
    """One notice as the person reads it."""
    if notice.type == "output":
        return f"bot: {notice.payload}"
    if notice.type == "error" and notice.error is not None:
        return f"(error {notice.error.code}: {notice.error.message})"
    return f"({notice.type})"  # unhandled, end


async def chat(session: str, messages: list[str]) -> None:
    settings = Settings.from_env()
    # A named reply queue is durable: notices wait there while this frontend restarts. It
    # lives in the namespace, like every queue of the deployment.
    client = await Client.connect(settings, reply_queue=f"{settings.namespace}.client.web")
    try:
        for text in messages:
            print(f"you: {text}")
            # conversation() sends one message and returns once its chain is over: the
            # notices of this turn, deduplicated, in order.
            turn = await client.conversation(session, text)
            # Notices of other chains: a reminder that waited in the queue while this
            # frontend was away, say. They are older than this turn's.
            for notice in client.unclaimed(session):
                print(f"{show(notice)}   (earlier)")
            for notice in turn:
                print(show(notice))
    finally:
        await client.close()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m examples.frontend SESSION MESSAGE...", file=sys.stderr)
        return 2
    try:
        asyncio.run(chat(argv[0], argv[1:]))
    except CloudBunchError as exc:
        print(f"frontend: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
