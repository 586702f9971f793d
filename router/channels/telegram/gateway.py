"""The Telegram gateway: Telegram updates in, notices out, on the channel adapter shape.

- **In.** aiogram delivers updates (long polling, or a webhook). A text message becomes an
  :class:`~router.channels.base.Update` of session ``telegram:{chat id}`` whose ``id`` is the
  Telegram message id, so an update Telegram delivers again (after a restart before its
  offset was confirmed) starts no second chain; a pressed inline button sends its payload;
  ``/new`` ends the conversation. An update is confirmed to Telegram only after its client
  message is confirmed by the broker (polling handles updates one at a time; the webhook
  answers after forwarding), so a crash loses none.
- **Out.** The gateway consumes its durable reply queue ``NS.client.telegram`` as a single
  active consumer: notices wait there while the gateway restarts, and arrive in the order the
  router published them. Each chat has its own sender, which shows the chat's notices in
  order within :class:`~.limits.SendLimits` and acknowledges each notice once Telegram took
  it. Quick replies become keyboards, markdown is sent as Telegram Markdown (plain text when
  Telegram cannot parse it), texts over 4,096 characters are split, and a chat action
  "typing" runs while the person's message is being handled.
- **Errors of the Bot API.** 429 (flood control): every send waits ``retry_after`` seconds,
  then the same call is made again. 5xx and network errors: retried with back-off, the notice
  held unacknowledged meanwhile. 403 (the person blocked the bot) and other 4xx: the notice
  is dropped with one log line. A group that became a supergroup: sent to its new id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiogram import Bot, Dispatcher
from aiogram import Router as AiogramRouter
from aiogram.enums import ChatAction, ParseMode
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNetworkError,
    TelegramNotFound,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.types import (
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    KeyboardButton,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
)

from worker_sdk import wire
from worker_sdk.broker import Broker, Delivery
from worker_sdk.client import Client
from worker_sdk.errors import CloudBunchError

from ..base import (
    Activity,
    Button,
    Capabilities,
    OutputChannel,
    Update,
    declare_notice_queue,
    forward,
    render,
)
from ..base import split_session as _split_session
from .limits import Rates, SendLimits

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANNEL = "telegram"
CAPABILITIES = Capabilities(buttons=True, typing=True, markdown=True)
MAX_TEXT = 4096
"""Longest text of one Telegram message, in characters."""
MAX_CALLBACK_DATA = 64
"""Longest ``callback_data`` of an inline button, in bytes."""
BUTTONS_PER_ROW = 3
TYPING_EVERY = 4.5
"""Seconds between chat actions: Telegram shows one for 5 seconds."""
TYPING_FOR = 20.0
"""Longest a chat shows "typing" for one message without any notice arriving."""
ALLOWED_UPDATES = ["message", "edited_message", "callback_query"]

EDITED_TEXT = "I read new messages only: please send your correction as a new message."
UNSUPPORTED_TEXT = "Sorry, I can only read text messages."
END_COMMANDS = ("/new", "/end")


def notice_queue(namespace: str) -> str:
    """The gateway's reply queue (shared by its replicas)."""
    return f"{namespace}.client.{CHANNEL}"


# ---------------------------------------------------------------------------- in


def _base(message: Message) -> dict[str, Any]:
    user = message.from_user
    return {"channel": CHANNEL, "chat_id": str(message.chat.id),
            "user": str(user.id) if user is not None else None,
            "locale": user.language_code if user is not None else None,
            "extra": {"chat_type": str(message.chat.type)}}


def message_update(message: Message) -> Update | None:
    """A Telegram message as an update (None: nothing the services can read)."""
    base = _base(message)
    msg_id = str(message.message_id)
    if message.text is not None:
        command = message.text.strip().split(maxsplit=1)[0].split("@")[0] if (
            message.text.strip()) else ""
        if command in END_COMMANDS:
            return Update(message_id=msg_id, kind="end", **base)
        return Update(message_id=msg_id, payload=message.text, **base)
    if message.location is not None:
        loc = message.location
        return Update(message_id=msg_id, payload={"location": {
            "latitude": loc.latitude, "longitude": loc.longitude}}, **base)
    if message.contact is not None:
        contact = message.contact
        return Update(message_id=msg_id, payload={"contact": {
            "phone_number": contact.phone_number, "first_name": contact.first_name,
            "user_id": contact.user_id}}, **base)
    return None


def callback_update(query: CallbackQuery) -> Update | None:
    """A pressed inline button as an update carrying the button's payload."""
    message = query.message
    if message is None or query.data is None:
        return None
    try:
        payload = json.loads(query.data)
    except ValueError:
        payload = query.data
    user = query.from_user
    return Update(channel=CHANNEL, chat_id=str(message.chat.id), message_id=f"cb:{query.id}",
                  payload=payload, user=str(user.id), locale=user.language_code,
                  extra={"chat_type": str(message.chat.type)})


# ---------------------------------------------------------------------------- out


def keyboard(buttons: Sequence[Button]) -> ReplyKeyboardMarkup | InlineKeyboardMarkup:
    """Quick replies as a keyboard: a reply keyboard when every button sends its own title
    (tapping one is the same as typing it), else inline buttons carrying the payloads."""
    rows = [buttons[i:i + BUTTONS_PER_ROW] for i in range(0, len(buttons), BUTTONS_PER_ROW)]
    if all(b.payload == b.title for b in buttons):
        return ReplyKeyboardMarkup(
            keyboard=[[KeyboardButton(text=b.title) for b in row] for row in rows],
            resize_keyboard=True, one_time_keyboard=True)
    return InlineKeyboardMarkup(inline_keyboard=[
        [InlineKeyboardButton(text=b.title, callback_data=_callback_data(b)) for b in row]
        for row in rows])


def _callback_data(button: Button) -> str:
    data = json.dumps(button.payload, separators=(",", ":"), ensure_ascii=False)
    if len(data.encode()) <= MAX_CALLBACK_DATA:
        return data
    log.warning("event=telegram_button_payload_too_long title=%r bytes=%d: the button sends "
                "its title instead", button.title, len(data.encode()))
    return json.dumps(button.title, ensure_ascii=False)[:MAX_CALLBACK_DATA]


def chunks(text: str, size: int = MAX_TEXT) -> list[str]:
    """``text`` in pieces Telegram accepts, cut at a line break or space when there is one."""
    out: list[str] = []
    while len(text) > size:
        cut = max(text.rfind("\n", 0, size), text.rfind(" ", 0, size))
        if cut <= 0:
            cut = size
        out.append(text[:cut])
        text = text[cut:].lstrip("\n ")
    out.append(text)
    return out


class Undeliverable(Exception):
    """Telegram refused a message for good (blocked bot, bad request): it is dropped."""


class TelegramOutput(OutputChannel):
    """Shows activities in Telegram chats, within the rate limits, retrying what Telegram
    asks to retry."""

    name = CHANNEL
    capabilities = CAPABILITIES

    def __init__(self, bot: Bot, limits: SendLimits, *, max_backoff: float = 30.0) -> None:
        self.bot = bot
        self.limits = limits
        self.max_backoff = max_backoff
        self.moved: dict[str, str] = {}
        """Groups that became supergroups: old chat id -> new chat id."""

    async def call(self, chat_id: str | None, make: Callable[[], Awaitable[T]]) -> T:
        """Make one Bot API call within the limits; retry flood control (after
        ``retry_after``), server and network errors (with back-off). Raises
        :class:`Undeliverable` for a refusal, TelegramMigrateToChat for a moved group."""
        backoff = 0.5
        while True:
            await self.limits.wait(chat_id)
            try:
                return await make()
            except TelegramRetryAfter as exc:
                log.warning("event=telegram_flood_control chat=%s retry_after=%s",
                            chat_id, exc.retry_after)
                self.limits.pause(float(exc.retry_after))
            except (TelegramServerError, TelegramNetworkError) as exc:
                log.warning("event=telegram_retry chat=%s error=%s wait=%.1f",
                            chat_id, type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            except TelegramMigrateToChat:
                raise
            except (TelegramForbiddenError, TelegramNotFound, TelegramBadRequest) as exc:
                raise Undeliverable(f"{type(exc).__name__}: {exc.message}") from exc

    async def _send(self, chat_id: str, text: str, markup: Any, *,
                    markdown: bool = False) -> None:
        pieces = chunks(text or "…")
        for i, piece in enumerate(pieces):
            # The keyboard goes with the last piece, under the question it answers.
            await self._send_piece(chat_id, piece, markup if i == len(pieces) - 1 else None,
                                   markdown)

    async def _send_piece(self, chat_id: str, text: str, markup: Any, markdown: bool) -> None:
        def send(markdown: bool = markdown) -> Awaitable[Message]:
            return self.bot.send_message(
                chat_id=self.moved.get(chat_id, chat_id), text=text, reply_markup=markup,
                parse_mode=ParseMode.MARKDOWN if markdown else None)

        try:
            await self.call(chat_id, send)
        except TelegramMigrateToChat as exc:
            # A group that became a supergroup: its messages go to the new id from now on.
            self.moved[chat_id] = str(exc.migrate_to_chat_id)
            await self.call(chat_id, send)
        except Undeliverable:
            if not markdown:
                raise
            # Telegram could not parse the markdown: show its source instead.
            log.info("event=telegram_markdown_refused chat=%s: sent as plain text", chat_id)
            await self.call(chat_id, lambda: send(markdown=False))

    async def send_text(self, chat_id: str, text: str, *, markdown: bool = False) -> None:
        # A message without quick replies takes away the keyboard of an earlier question.
        await self._send(chat_id, text, ReplyKeyboardRemove(), markdown=markdown)

    async def send_buttons(self, chat_id: str, text: str, buttons: tuple[Button, ...]) -> None:
        await self._send(chat_id, text, keyboard(buttons))

    async def send_typing(self, chat_id: str, on: bool) -> None:
        # Telegram has no "stop typing": the next message (or 5 seconds) ends it.
        if on:
            target = self.moved.get(chat_id, chat_id)
            await self.call(None, lambda: self.bot.send_chat_action(
                chat_id=target, action=ChatAction.TYPING))


# ---------------------------------------------------------------------------- gateway


@dataclass
class _Item:
    activity: Activity
    delivery: Delivery | None  # acknowledged once shown; None for the gateway's own words


class TelegramGateway:
    """Forwards Telegram updates to the router and shows its notices in the chats."""

    def __init__(self, bot: Bot, broker: Broker, namespace: str, *,
                 queue: str | None = None, rates: Rates | None = None, prefetch: int = 256,
                 dedup_size: int = 10_000, partitions: int = 0) -> None:
        self.bot = bot
        self.broker = broker
        self.namespace = namespace
        self.queue = queue or notice_queue(namespace)
        # Sends only: the reply queue is consumed below, acknowledging each notice once
        # Telegram has it (the Client acknowledges on arrival).
        self.client = Client(broker, namespace, self.queue, partitions=partitions)
        self.output = TelegramOutput(bot, SendLimits(rates or Rates()))
        self.prefetch = prefetch
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._dedup_size = dedup_size
        self._outboxes: dict[str, asyncio.Queue[_Item]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._typing: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.dispatcher = self._dispatcher()

    def _dispatcher(self) -> Dispatcher:
        router = AiogramRouter(name="cloudbunch")
        router.message.register(self.on_message)
        router.edited_message.register(self.on_edited)
        router.callback_query.register(self.on_callback)
        dispatcher = Dispatcher()
        dispatcher.include_router(router)
        return dispatcher

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Declare and consume the reply queue (as a single active consumer)."""
        await declare_notice_queue(self.broker, self.queue)
        await self.broker.consume(self.queue, self._on_delivery, prefetch=self.prefetch)
        log.info("event=telegram_gateway_started queue=%s", self.queue)

    async def stop(self) -> None:
        """Stop consuming; notices not yet shown go back to the queue for the next gateway."""
        self._stopping = True
        with contextlib.suppress(Exception):
            await self.broker.cancel(self.queue, drain=0.5)
        tasks = [*self._senders.values(), *self._typing.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ in

    async def on_message(self, message: Message) -> None:
        update = message_update(message)
        if update is None:
            self._say(str(message.chat.id), UNSUPPORTED_TEXT)
            return
        await self.forward(update)

    async def on_edited(self, message: Message) -> None:
        # An edit of a message already answered cannot be taken back: say so.
        log.debug("event=telegram_edit_ignored chat=%s message=%s", message.chat.id,
                  message.message_id)
        self._say(str(message.chat.id), EDITED_TEXT)

    async def on_callback(self, query: CallbackQuery) -> None:
        with contextlib.suppress(Undeliverable):
            await self.output.call(None, lambda: self.bot.answer_callback_query(query.id))
        update = callback_update(query)
        if update is not None:
            await self.forward(update)

    async def forward(self, update: Update) -> None:
        """Publish the update as a client message; retry until the broker confirms it, so
        that the update is confirmed to Telegram only then."""
        if update.kind == "message":
            # Before publishing: the first notice, however fast, then ends it.
            self._start_typing(update.chat_id)
        backoff = 0.2
        while True:
            try:
                await forward(self.client, update)
                break
            except CloudBunchError as exc:
                if self._stopping:
                    raise
                log.warning("event=telegram_forward_retry session=%s error=%s wait=%.1f",
                            update.session, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _start_typing(self, chat_id: str) -> None:
        old = self._typing.pop(chat_id, None)
        if old is not None:
            old.cancel()
        self._typing[chat_id] = asyncio.create_task(self._type(chat_id))

    def _stop_typing(self, chat_id: str) -> None:
        task = self._typing.pop(chat_id, None)
        if task is not None:
            task.cancel()

    async def _type(self, chat_id: str) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + TYPING_FOR
        try:
            while loop.time() < until:
                await self.output.send_typing(chat_id, True)
                await asyncio.sleep(TYPING_EVERY)
        except Undeliverable:
            pass
        finally:
            if self._typing.get(chat_id) is asyncio.current_task():
                del self._typing[chat_id]

    # ------------------------------------------------------------------ out

    async def _on_delivery(self, delivery: Delivery) -> None:
        try:
            notice = wire.Notice.from_wire(wire.decode(delivery.body))
            channel, chat_id = _split_session(notice.session)
            if channel != CHANNEL:
                raise ValueError(f"session {notice.session!r} is not a {CHANNEL} session")
        except (wire.BadBody, ValueError) as exc:
            log.warning("event=telegram_bad_notice queue=%s message_id=%s error=%s",
                        self.queue, delivery.message_id, exc)
            await delivery.ack()
            return
        if notice.id in self._seen:
            log.debug("event=telegram_notice_duplicate session=%s id=%s", notice.session,
                      notice.id)
            await delivery.ack()
            return
        self._seen[notice.id] = None
        if len(self._seen) > self._dedup_size:
            self._seen.popitem(last=False)
        self._enqueue(chat_id, _Item(render(notice, CAPABILITIES), delivery))

    def _say(self, chat_id: str, text: str) -> None:
        """Words of the gateway itself, in the chat's order."""
        self._enqueue(chat_id, _Item(Activity("message", text), None))

    def _enqueue(self, chat_id: str, item: _Item) -> None:
        outbox = self._outboxes.get(chat_id)
        if outbox is None:
            outbox = self._outboxes[chat_id] = asyncio.Queue()
        outbox.put_nowait(item)
        if chat_id not in self._senders:
            self._senders[chat_id] = asyncio.create_task(self._sender(chat_id, outbox))

    async def _sender(self, chat_id: str, outbox: asyncio.Queue[_Item]) -> None:
        """Show one chat's items in order; end when the chat has been quiet a minute."""
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 a cancel that meets a
                    # ready item inside wait_for can be lost, and stop() would hang.
                    async with asyncio.timeout(60.0):
                        item = await outbox.get()
                except TimeoutError:
                    if outbox.empty():
                        return
                    continue
                self._stop_typing(chat_id)
                try:
                    await self.output.show(chat_id, item.activity)
                except Undeliverable as exc:
                    log.warning("event=telegram_undeliverable chat=%s kind=%s error=%s: "
                                "dropped", chat_id, item.activity.kind, exc)
                if item.delivery is not None:
                    await item.delivery.ack()
        finally:
            if self._senders.get(chat_id) is asyncio.current_task():
                del self._senders[chat_id]
                if outbox.empty():
                    self._outboxes.pop(chat_id, None)
