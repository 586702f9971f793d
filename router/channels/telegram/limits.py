"""Outbound rate limits that keep a bot inside what the Telegram Bot API allows.

Telegram's published limits (core.telegram.org/bots/faq, "My bot is hitting limits"): about
one message per second in one chat (short bursts pass), at most 20 messages per minute in a
group, and about 30 messages per second for the whole bot. Beyond them the API answers 429
with ``retry_after``; :meth:`SendLimits.pause` then holds every send of the bot that long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rates:
    """Sends per second and bursts; the defaults are Telegram's limits."""

    bot: float = 30.0
    chat: float = 1.0
    group: float = 20.0 / 60.0
    burst: int = 3
    """Sends one chat may make at once before its rate applies."""


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; :meth:`delay` takes one."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def delay(self) -> float:
        """Take a token; return how long to wait before using it (0: now)."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class SendLimits:
    """Waits before each send so that the bot, each chat and each group stay within rates."""

    def __init__(self, rates: Rates | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        rates = rates or Rates()
        self.rates = rates
        self._clock = clock
        self._bot = TokenBucket(rates.bot, max(1.0, rates.bot), clock)
        self._chats: dict[str, TokenBucket] = {}
        self._paused_until = 0.0

    def _chat(self, chat_id: str) -> TokenBucket:
        bucket = self._chats.get(chat_id)
        if bucket is None:
            # Group and channel chat ids are negative.
            rate = self.rates.group if chat_id.startswith("-") else self.rates.chat
            bucket = self._chats[chat_id] = TokenBucket(rate, self.rates.burst, self._clock)
            if len(self._chats) > 100_000:  # forget the oldest chats (a full bucket each)
                for old in list(self._chats)[:50_000]:
                    del self._chats[old]
        return bucket

    async def wait(self, chat_id: str | None) -> None:
        """Wait until one more send (to ``chat_id``, or a bot-wide call) is allowed."""
        while (pause := self._paused_until - self._clock()) > 0:
            await asyncio.sleep(pause)
        delay = max(self._chat(chat_id).delay() if chat_id is not None else 0.0,
                    self._bot.delay())
        if delay > 0:
            await asyncio.sleep(delay)
        while (pause := self._paused_until - self._clock()) > 0:
            await asyncio.sleep(pause)

    def pause(self, seconds: float) -> None:
        """Hold every send for ``seconds`` (a 429's ``retry_after``)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)
