"""The Telegram gateway's pieces without a network: update mapping, keyboards, splitting,
rate limits, the retry rules of Bot API errors, the token kept out of logs, settings."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiogram.exceptions import (
    TelegramBadRequest,
    TelegramForbiddenError,
    TelegramRetryAfter,
    TelegramServerError,
)
from aiogram.methods import SendMessage
from aiogram.types import CallbackQuery, InlineKeyboardMarkup, Message, ReplyKeyboardMarkup

from router.channels.base import Button
from router.channels.telegram.command import TokenFilter, telegram_settings
from router.channels.telegram.gateway import (
    MAX_CALLBACK_DATA,
    TelegramOutput,
    Undeliverable,
    callback_update,
    chunks,
    keyboard,
    message_update,
)
from router.channels.telegram.limits import Rates, SendLimits, TokenBucket
from worker_sdk.errors import ConfigError

TOKEN = "123456:AAAA-secret"


def message(**fields: Any) -> Message:
    body: dict[str, Any] = {"message_id": 17, "date": 0,
                            "chat": {"id": 42, "type": "private"},
                            "from": {"id": 9, "is_bot": False, "first_name": "Ada",
                                     "language_code": "de"}}
    body.update(fields)
    return Message.model_validate(body)


# ---------------------------------------------------------------------------- in


def test_a_text_message_is_an_update_of_the_chat_session() -> None:
    update = message_update(message(text="large"))
    assert update is not None
    assert (update.session, update.message_id, update.payload) == ("telegram:42", "17", "large")
    assert update.meta() == {"chat_type": "private", "channel": "telegram", "user": "9",
                             "locale": "de"}


@pytest.mark.parametrize("text", ["/new", "/end", "/new@bunch_pizza_bot", " /new please"])
def test_new_ends_the_conversation(text: str) -> None:
    update = message_update(message(text=text))
    assert update is not None and update.kind == "end" and update.message_id == "17"


def test_a_location_is_structured_and_a_sticker_is_not_forwarded() -> None:
    update = message_update(message(location={"latitude": 1.5, "longitude": 2.5}))
    assert update is not None
    assert update.payload == {"location": {"latitude": 1.5, "longitude": 2.5}}
    sticker = {"file_id": "x", "file_unique_id": "y", "type": "regular", "width": 1,
               "height": 1, "is_animated": False, "is_video": False}
    assert message_update(message(sticker=sticker)) is None


def test_a_pressed_inline_button_sends_its_payload() -> None:
    query = CallbackQuery.model_validate({
        "id": "q1", "chat_instance": "c", "data": '{"size":"large"}',
        "from": {"id": 9, "is_bot": False, "first_name": "Ada"},
        "message": {"message_id": 3, "date": 0, "chat": {"id": 42, "type": "private"},
                    "text": "Which size?"}})
    update = callback_update(query)
    assert update is not None
    assert (update.session, update.message_id, update.payload) == (
        "telegram:42", "cb:q1", {"size": "large"})


# ---------------------------------------------------------------------------- out


def test_titles_become_a_reply_keyboard_and_payloads_inline_buttons() -> None:
    reply = keyboard((Button("small", "small"), Button("medium", "medium"),
                      Button("large", "large"), Button("xl", "xl")))
    assert isinstance(reply, ReplyKeyboardMarkup) and reply.one_time_keyboard
    assert [[b.text for b in row] for row in reply.keyboard] == [
        ["small", "medium", "large"], ["xl"]]
    inline = keyboard((Button("Large", {"size": "L"}), Button("Huge", "x" * 100)))
    assert isinstance(inline, InlineKeyboardMarkup)
    (row,) = inline.inline_keyboard
    assert row[0].callback_data == '{"size":"L"}'
    # Too long for callback_data (64 bytes): the button sends its title.
    assert row[1].callback_data == '"Huge"'
    assert all(len((b.callback_data or "").encode()) <= MAX_CALLBACK_DATA for b in row)


def test_long_texts_are_split_at_spaces() -> None:
    text = ("word " * 2000).strip()
    pieces = chunks(text, 4096)
    assert all(len(p) <= 4096 for p in pieces) and len(pieces) == 3
    assert " ".join(pieces) == text
    assert chunks("x" * 5000, 4096) == ["x" * 4096, "x" * 904]
    assert chunks("short") == ["short"]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_a_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(1.0, 3, clock)
    assert [bucket.delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.delay() == pytest.approx(1.0)
    assert bucket.delay() == pytest.approx(2.0)
    clock.now = 10.0
    assert bucket.delay() == 0.0


def test_groups_get_twenty_a_minute() -> None:
    clock = Clock()
    limits = SendLimits(Rates(burst=1), clock)
    assert limits._chat("-100123").rate == pytest.approx(20 / 60)
    assert limits._chat("42").rate == 1.0


async def test_a_pause_holds_every_send() -> None:
    limits = SendLimits(Rates(bot=1000, chat=1000, burst=1000))
    loop = asyncio.get_running_loop()
    limits.pause(0.3)
    start = loop.time()
    await limits.wait("42")
    assert loop.time() - start >= 0.29


class FakeBot:
    """Answers send_message with the queued errors, then succeeds."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.sent: list[dict[str, Any]] = []
        self.tried: list[dict[str, Any]] = []

    async def send_message(self, **kwargs: Any) -> None:
        self.tried.append(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(kwargs)


METHOD = SendMessage(chat_id=42, text="x")


async def test_flood_control_waits_retry_after_then_sends_again() -> None:
    bot = FakeBot(TelegramRetryAfter(METHOD, "Too Many Requests", 1))
    output = TelegramOutput(bot, SendLimits(Rates(bot=1000, chat=1000, burst=1000)))  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    start = loop.time()
    await output.send_text("42", "hello")
    assert loop.time() - start >= 0.99
    assert [m["text"] for m in bot.sent] == ["hello"]


async def test_server_errors_are_retried_and_refusals_are_not() -> None:
    fast = SendLimits(Rates(bot=1000, chat=1000, burst=1000))
    bot = FakeBot(TelegramServerError(METHOD, "Bad Gateway"))
    await TelegramOutput(bot, fast).send_text("42", "hello")  # type: ignore[arg-type]
    assert len(bot.sent) == 1
    blocked = FakeBot(TelegramForbiddenError(METHOD, "Forbidden: bot was blocked by the user"))
    with pytest.raises(Undeliverable, match="blocked"):
        await TelegramOutput(blocked, fast).send_text("42", "hello")  # type: ignore[arg-type]
    assert blocked.sent == []


async def test_markdown_telegram_cannot_parse_is_sent_as_plain_text() -> None:
    bot = FakeBot(TelegramBadRequest(METHOD, "Bad Request: can't parse entities"))
    output = TelegramOutput(bot, SendLimits(Rates(bot=1000, chat=1000, burst=1000)))  # type: ignore[arg-type]
    await output.send_text("42", "*unclosed", markdown=True)
    assert [m["parse_mode"] for m in bot.tried] == ["Markdown", None]
    assert bot.sent[0]["text"] == "*unclosed"


# ---------------------------------------------------------------------------- settings


def test_the_token_is_masked_in_log_lines() -> None:
    record = logging.LogRecord("aiogram", logging.INFO, __file__, 1,
                               "POST https://api.telegram.org/bot%s/getMe", (TOKEN,), None)
    TokenFilter(TOKEN).filter(record)
    assert TOKEN not in record.getMessage()
    assert record.getMessage() == "POST https://api.telegram.org/bot***/getMe"


def test_settings_need_a_token_and_derive_the_webhook_secret() -> None:
    with pytest.raises(ConfigError, match="set CLOUDBUNCH_TELEGRAM_TOKEN"):
        telegram_settings({}, {})
    with pytest.raises(ConfigError, match="does not look like a bot token"):
        telegram_settings({}, {"CLOUDBUNCH_TELEGRAM_TOKEN": "nonsense"})
    env = {"CLOUDBUNCH_TELEGRAM_TOKEN": TOKEN}
    one, two = telegram_settings({}, env), telegram_settings({}, dict(env))
    assert one["secret"] == two["secret"] and TOKEN not in one["secret"]
    assert one["webhook_url"] is None and one["rate_chat"] == 1.0
    with pytest.raises(ConfigError, match="--rate-chat / CLOUDBUNCH_TELEGRAM_RATE_CHAT must be "
                       "above 0"):
        telegram_settings({"rate_chat": "0"}, env)
    with pytest.raises(ConfigError, match="http:// or https://"):
        telegram_settings({"webhook_url": "ftp://x"}, env)
