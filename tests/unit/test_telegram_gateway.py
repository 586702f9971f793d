"""The Telegram gateway's notice path on the in-memory broker, with a stand-in bot: each
notice is acknowledged only once Telegram took it, copies are shown once, a refused message
is dropped without holding up the chat, and a chat's notices keep their order."""

from __future__ import annotations

import asyncio
from typing import Any

from aiogram.exceptions import TelegramForbiddenError
from aiogram.methods import SendMessage

from router.channels.telegram.gateway import TelegramGateway, notice_queue
from router.channels.telegram.limits import Rates
from tests.integration.procs import eventually
from worker_sdk import wire
from worker_sdk.broker import Outgoing
from worker_sdk.memory import MemoryBroker

NS = "tgunit"
FAST = Rates(bot=1000, chat=1000, group=1000, burst=1000)


class Bot:
    """Records what is sent; ``hold`` makes sends wait; ``refuse`` chats are blocked."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.hold: asyncio.Event | None = None
        self.refuse: set[str] = set()

    async def send_message(self, *, chat_id: str, text: str, **_: Any) -> None:
        if self.hold is not None:
            await self.hold.wait()
        if chat_id in self.refuse:
            raise TelegramForbiddenError(SendMessage(chat_id=chat_id, text=text),
                                         "Forbidden: bot was blocked by the user")
        self.sent.append((chat_id, text))

    async def send_chat_action(self, **_: Any) -> bool:
        return True


def notice(chat: str, text: str, notice_id: str) -> Outgoing:
    body = wire.Notice(session=f"telegram:{chat}", id=notice_id, in_reply_to="m1",
                       type="output", payload=text)
    return Outgoing(notice_queue(NS), wire.encode(body.to_wire()), notice_id)


async def started(bot: Bot) -> tuple[TelegramGateway, MemoryBroker]:
    broker = MemoryBroker()
    gateway = TelegramGateway(bot, broker, NS, rates=FAST)  # type: ignore[arg-type]
    await gateway.start()
    return gateway, broker


async def test_copies_are_shown_once_and_every_notice_is_acknowledged() -> None:
    bot = Bot()
    gateway, broker = await started(bot)
    await broker.publish([notice("1", "a", "n1"), notice("1", "a", "n1"),
                          notice("1", "b", "n2"), notice("2", "c", "n3")])
    await eventually(lambda: len(bot.sent) == 3, 5, "three messages")
    assert [t for c, t in bot.sent if c == "1"] == ["a", "b"]
    await gateway.stop()
    assert broker.messages(notice_queue(NS)) == []  # all acknowledged, none handed back


async def test_a_notice_not_yet_taken_by_telegram_goes_back_to_the_queue() -> None:
    bot = Bot()
    bot.hold = asyncio.Event()
    gateway, broker = await started(bot)
    await broker.publish([notice("1", "a", "n1")])
    await eventually(lambda: broker.messages(notice_queue(NS)) == [], 5, "delivered")
    await gateway.stop()  # Telegram never answered: the notice is not acknowledged
    assert len(broker.messages(notice_queue(NS))) == 1
    assert bot.sent == []


async def test_a_refused_message_is_dropped_and_the_chat_goes_on() -> None:
    bot = Bot()
    bot.refuse.add("1")
    gateway, broker = await started(bot)
    await broker.publish([notice("1", "a", "n1"), notice("2", "b", "n2")])
    await eventually(lambda: bot.sent == [("2", "b")], 5, "the other chat's message")
    await gateway.stop()
    assert broker.messages(notice_queue(NS)) == []
