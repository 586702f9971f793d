"""A fake Telegram Bot API server on 127.0.0.1 (aiohttp), for the Telegram gateway's tests.

It speaks the Bot API as aiogram calls it (``/bot{token}/{method}``, form-encoded
parameters, ``{"ok": ..., "result": ...}`` answers) for the methods the gateway uses. Tests
queue updates as a person would cause them, read what the bot sent, and make the next call
of a method fail (a 429 with ``retry_after``, a 5xx, a 403).

``getUpdates`` follows Telegram: updates stay until a later call's ``offset`` confirms them,
so a gateway that restarts before confirming gets them again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Sent:
    """One message the bot sent."""

    chat_id: str
    text: str
    reply_markup: dict[str, Any] | None
    parse_mode: str | None
    at: float

    def buttons(self) -> list[str]:
        """The titles of its keyboard (reply or inline), in order."""
        if not self.reply_markup:
            return []
        rows = self.reply_markup.get("keyboard") or self.reply_markup.get("inline_keyboard")
        return [b["text"] for row in rows or [] for b in row]


@dataclass
class Failure:
    status: int
    description: str
    parameters: dict[str, Any] | None = None


@dataclass
class FakeBotAPI:
    token: str
    updates: list[dict[str, Any]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    actions: list[tuple[str, str]] = field(default_factory=list)
    calls: list[tuple[str, float]] = field(default_factory=list)
    refused: list[tuple[str, int, float]] = field(default_factory=list)
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    confirmed: int = 0
    """Updates with a lower id were confirmed by a getUpdates offset."""
    webhook: str | None = None
    webhook_secret: str | None = None
    _next_update: int = 1
    _next_message: int = 1
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    base_url: str = ""

    # ------------------------------------------------------------------ server

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response({"ok": False, "error_code": 401,
                                      "description": "Unauthorized"}, status=401)
        method = request.match_info["method"]
        params = dict(await request.post()) if request.can_read_body else {}
        params.update(request.query)
        now = time.monotonic()
        self.calls.append((method, now))
        queued = self.failures.get(method)
        if queued:
            failure = queued.pop(0)
            self.refused.append((method, failure.status, now))
            body: dict[str, Any] = {"ok": False, "error_code": failure.status,
                                    "description": failure.description}
            if failure.parameters:
                body["parameters"] = failure.parameters
            return web.json_response(body, status=failure.status)
        handler = getattr(self, "api_" + method, None)
        if handler is None:
            return web.json_response({"ok": False, "error_code": 404,
                                      "description": "Not Found: method not found"}, status=404)
        result = await handler(params)
        return web.json_response({"ok": True, "result": result})

    # ------------------------------------------------------------------ methods

    async def api_getMe(self, params: dict[str, Any]) -> Any:
        return {"id": 4242, "is_bot": True, "first_name": "Bunch Pizza",
                "username": "bunch_pizza_bot"}

    async def api_getUpdates(self, params: dict[str, Any]) -> Any:
        offset = int(params.get("offset") or 0)
        if offset:
            self.confirmed = max(self.confirmed, offset)
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
            self._changed.set()
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + timeout
        while not self.updates and time.monotonic() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        limit = int(params.get("limit") or 100)
        return self.updates[:limit]

    async def api_sendMessage(self, params: dict[str, Any]) -> Any:
        markup = params.get("reply_markup")
        sent = Sent(str(params["chat_id"]), str(params["text"]),
                    json.loads(markup) if markup else None, params.get("parse_mode"),
                    time.monotonic())
        self.sent.append(sent)
        self._changed.set()
        return self._message(int(sent.chat_id), sent.text, from_bot=True)

    async def api_sendChatAction(self, params: dict[str, Any]) -> Any:
        self.actions.append((str(params["chat_id"]), str(params["action"])))
        return True

    async def api_answerCallbackQuery(self, params: dict[str, Any]) -> Any:
        return True

    async def api_deleteWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = None
        return True

    async def api_setWebhook(self, params: dict[str, Any]) -> Any:
        self.webhook = str(params["url"])
        self.webhook_secret = params.get("secret_token")
        return True

    # ------------------------------------------------------------------ the person

    def _message(self, chat_id: int, text: str, *, from_bot: bool = False,
                 message_id: int | None = None) -> dict[str, Any]:
        if message_id is None:
            message_id = self._next_message
            self._next_message += 1
        sender = ({"id": 4242, "is_bot": True, "first_name": "Bunch Pizza"} if from_bot else
                  {"id": chat_id, "is_bot": False, "first_name": "Ada",
                   "language_code": "en"})
        return {"message_id": message_id, "date": int(time.time()),
                "chat": {"id": chat_id, "type": "private", "first_name": "Ada"},
                "from": sender, "text": text}

    def _push(self, update: dict[str, Any]) -> dict[str, Any]:
        update = {"update_id": self._next_update, **update}
        self._next_update += 1
        self.updates.append(update)
        self._changed.set()
        return update

    def say(self, chat_id: int, text: str) -> dict[str, Any]:
        """The person sends ``text``; returns the update (the gateway polls it)."""
        return self._push({"message": self._message(chat_id, text)})

    def edit(self, update: dict[str, Any], text: str) -> dict[str, Any]:
        """The person edits the message of an earlier update."""
        message = {**update["message"], "text": text, "edit_date": int(time.time())}
        return self._push({"edited_message": message})

    def redeliver(self, update: dict[str, Any]) -> dict[str, Any]:
        """The same message again, as a new update (Telegram re-sending it)."""
        return self._push({"message": update["message"]})

    def fail_next(self, method: str, failure: Failure) -> None:
        self.failures.setdefault(method, []).append(failure)

    def flood(self, method: str, retry_after: int) -> None:
        """The next call of ``method`` gets a 429 with ``retry_after``."""
        self.fail_next(method, Failure(429, f"Too Many Requests: retry after {retry_after}",
                                       {"retry_after": retry_after}))

    def to(self, chat_id: int) -> list[Sent]:
        return [s for s in self.sent if s.chat_id == str(chat_id)]

    def processed(self, update: dict[str, Any]) -> Callable[[], bool]:
        """A check: the gateway confirmed ``update`` (asked for a later offset)."""
        return lambda: self.confirmed > update["update_id"]
