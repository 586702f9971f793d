"""``cloudbunch telegram`` end to end: a fake Bot API server on 127.0.0.1, a real router, the
pizza services and the gateway as processes, on the real RabbitMQ and Redis.

The person's messages reach the gateway as Telegram updates (long polling, or the webhook);
what the bot sends is compared with the reference pizza transcript. On the way: a 429 with
``retry_after``, the gateway restarted in the middle of the order (the session goes on), a
duplicate update (no second chain) and an edited message (not forwarded).
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from router.channels.base import END_TEXT
from router.channels.telegram.command import telegram_settings
from router.store import DEFAULT_REDIS_URL
from tests.fake_telegram import FakeBotAPI, Sent

from . import transcript
from .procs import Harness, Proc, child_env, cli, eventually

pytestmark = pytest.mark.infra

TOKEN = "123456:TEST-token-never-logged"
CHAT = 777


@pytest.fixture
def redis_url() -> str:
    """One Redis server: this suite tests the gateway, not the store."""
    return os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    fake = FakeBotAPI(TOKEN)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def shown(sent: Sent) -> str:
    """A sent message as the reference transcript writes it."""
    if sent.text == END_TEXT:
        return "end:"
    titles = "".join(f" [{t}]" for t in sent.buttons())
    return f"output:{sent.text}{titles}"


async def gateway(harness: Harness, api: FakeBotAPI, *extra: str, **env: str) -> Proc:
    """Start ``cloudbunch telegram`` against the fake API; wait until it consumes."""
    queue = f"{harness.ns}.client.telegram"
    harness.queues.add(queue)  # the gateway's durable reply queue: deleted after the test
    before = await harness.consumers(queue)
    argv = cli("telegram", "--api-url", api.base_url, "--namespace", harness.ns,
               "--amqp-url", harness.amqp_url, "--polling-timeout", "1",
               "--rate-chat", "20", "--burst", "20", *extra)
    proc = await Proc.spawn(f"telegram{len(harness.procs)}", argv,
                            child_env(CLOUDBUNCH_TELEGRAM_TOKEN=TOKEN, **env))
    harness.procs.append(proc)

    async def ready() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"{proc.name} exited with {proc.returncode}:\n"
                                 f"{proc.output()}")
        return ("cloudbunch telegram: bot @bunch_pizza_bot" in proc.output()
                and await harness.consumers(queue) > before)

    # Generous: importing aiogram alone takes seconds of CPU on a busy machine.
    await eventually(ready, 120, f"{proc.name} started and consuming {queue}")
    return proc


async def expect_sent(api: FakeBotAPI, count: int, what: str) -> list[Sent]:
    await eventually(lambda: len(api.to(CHAT)) >= count, 30,
                     f"{count} messages to the chat ({what}); have "
                     f"{[s.text[:40] for s in api.to(CHAT)]}")
    return api.to(CHAT)


@pytest.mark.timeout(900)  # three gateway starts; aiogram is slow to import on a busy machine
async def test_pizza_order_through_telegram(e2e: Harness, api: FakeBotAPI) -> None:
    await e2e.router("pizza")
    await e2e.worker(*(f"router.demo_flow:{name}" for name in
                       ("pizza", "menu", "order", "checkout", "address", "payment")))
    first = await gateway(e2e, api)

    # The first answer meets flood control: it is sent again, not before retry_after.
    api.flood("sendMessage", retry_after=1)
    lines: list[str] = []
    rounds = transcript.rounds()
    sent = 0
    restarted = False
    for text, expected in rounds:
        if text == "12 Baker Street" and not restarted:
            # Restart in the middle of the order: the message sent while the gateway is
            # down is taken by the next one, and the session goes on where it was.
            assert await first.stop() == 0
            update = api.say(CHAT, text)
            await gateway(e2e, api)
            restarted = True
        else:
            update = api.say(CHAT, text)
        got = await expect_sent(api, sent + len(expected), repr(text))
        lines.append(f"> {text}")
        lines.extend(shown(s) for s in got[sent:])
        sent = len(got)

        if text == "12 Baker Street":
            # Telegram delivers the same message again: the router has its id, nothing runs.
            duplicate = api.redeliver(update)
            await eventually(api.processed(duplicate), 20, "the duplicate update confirmed")
            await e2e.idle(f"telegram:{CHAT}", timeout=20)
        if text == "large":
            # An edit is answered by the gateway itself and never reaches the flow.
            edited = api.edit(update, "small")
            got = await expect_sent(api, sent + 1, "the edit's answer")
            assert got[sent].text.startswith("I read new messages only")
            sent += 1
            await eventually(api.processed(edited), 20, "the edit confirmed")

    assert lines == transcript.lines()
    assert len(api.to(CHAT)) == sent  # nothing more, the duplicate included

    # The 429: refused once, then sent after at least retry_after seconds.
    (method, status, refused_at) = api.refused[0]
    assert (method, status) == ("sendMessage", 429)
    assert api.sent[0].at - refused_at >= 1.0
    assert "Welcome to Bunch Pizza" in api.sent[0].text
    assert sum("Welcome to Bunch Pizza" in s.text for s in api.sent) == 1
    # Typing was shown while messages were handled; quick replies came as keyboards.
    assert (str(CHAT), "typing") in api.actions
    assert any(s.reply_markup and "keyboard" in s.reply_markup for s in api.sent) or not any(
        "[" in line for line in lines)
    for proc in e2e.procs:
        if proc.name.startswith("telegram"):
            assert TOKEN not in proc.output()
            assert TOKEN.split(":")[1] not in proc.output()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(600)
async def test_webhook_mode(e2e: Harness, api: FakeBotAPI) -> None:
    """With --webhook-url the gateway registers its webhook and takes updates posted to it,
    checking Telegram's secret header."""
    await e2e.router("pizza")
    await e2e.worker("router.demo_flow:pizza", "router.demo_flow:menu")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/tg/hook"
    await gateway(e2e, api, "--webhook-url", url, "--listen-port", str(port))
    assert api.webhook == url
    secret = telegram_settings({}, {"CLOUDBUNCH_TELEGRAM_TOKEN": TOKEN})["secret"]
    assert api.webhook_secret == secret

    def update(update_id: int, text: str) -> dict[str, Any]:
        return {"update_id": update_id, "message": {
            "message_id": update_id, "date": 0, "text": text,
            "chat": {"id": CHAT, "type": "private"},
            "from": {"id": CHAT, "is_bot": False, "first_name": "Ada"}}}

    async with aiohttp.ClientSession() as http:
        async with http.post(url, json=update(1, "hi")) as wrong:
            assert wrong.status == 401  # no secret: not Telegram
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
        for i, text in enumerate(["hi", "order"], start=2):
            async with http.post(url, json=update(i, text), headers=headers) as ok:
                assert ok.status == 200
            await expect_sent(api, i - 1, text)
    assert api.to(CHAT)[0].text.startswith("Welcome to Bunch Pizza")
    assert api.to(CHAT)[1].text.startswith("Which pizza would you like?")


async def test_missing_token_is_one_line(e2e: Harness) -> None:
    proc = await Proc.spawn("telegram", cli("telegram", "--namespace", e2e.ns), child_env())
    e2e.procs.append(proc)
    assert await proc.process.wait() == 1
    out = proc.output().strip()
    assert out == ("cloudbunch telegram: no bot token: set CLOUDBUNCH_TELEGRAM_TOKEN to the "
                   "token @BotFather gave you")
