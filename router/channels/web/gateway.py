"""The web gateway: an aiohttp server for the chat page and one WebSocket per browser tab.

It is a frontend of the contract like any other. Design (docs/web.md says more):

- **One shared durable reply queue**, ``NS.web.notices``, is the ``reply_to`` of every web
  client message, whichever replica sent it. Every replica consumes it, as a *single active
  consumer*: one replica at a time gets the notices, in the order the router published them,
  and the next one takes over (with the unacknowledged ones) when it dies.
- The consuming replica **appends each notice to the session's history** (a Redis stream,
  :mod:`.history`) under the notice id, and acknowledges it only then: a redelivered notice
  finds its id and is appended once. Every entry gets the session's next number.
- **Sockets read the history, never the queue**: each replica listens to the sessions of its
  own sockets (a per-session Redis channel carries each new entry), so a notice consumed by
  one replica reaches a socket on another. A page that reconnects (to any replica) sends the
  last number it showed and gets exactly the entries after it.
- The person's messages are history entries too (appended before they are published, with
  the session's next client ``seq``), so a reload shows both sides of the conversation.
- Typing and the ``--debug`` stack come from the router's session record (read only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from worker_sdk import wire
from worker_sdk.broker import Broker, Delivery
from worker_sdk.client import Client
from worker_sdk.errors import CloudBunchError

from ...core import Record
from ...store import SessionStore
from ..base import Capabilities, Update, declare_notice_queue, forward, render, session_id
from .history import History
from .metrics import WebMetrics

log = logging.getLogger(__name__)

CHANNEL = "web"
CAPABILITIES = Capabilities(buttons=True, typing=True, markdown=False)

CLOSE_REPLACED = 4001
"""Close code: the same session was opened in another tab (do not reconnect by yourself)."""
CLOSE_POLICY = 4008
"""Close code: too many frames refused (flood)."""

IDLE_CHECK = 30.0
"""Seconds after which a quiet socket looks for entries it may have missed."""

_CHAT_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_MESSAGE_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8}){0,3}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def notice_queue(namespace: str) -> str:
    """The web gateways' shared reply queue."""
    return f"{namespace}.web.notices"


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The gateway's settings (``cloudbunch web --help`` names their variables)."""

    namespace: str = "cb"
    debug: bool = False
    max_frame: int = 4096
    """Bytes of one frame from a page; a longer one is refused with an error frame."""
    max_text: int = 1000
    """Characters of one typed message."""
    rate: float = 1.0
    """Messages per second a socket may send, on average."""
    burst: int = 10
    """Messages a socket may send at once before ``rate`` applies."""
    flood: int = 50
    """Refused frames in a row after which the socket is closed."""
    hello_timeout: float = 10.0
    title: str = "CloudBunch chat"
    partitions: int = 0
    """The routers' ``--partitions``: client messages go to their session's partition."""


class _Refused(Exception):
    """A frame the gateway does not forward: ``code`` and a sentence for the page."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id: str | None = None  # the refused message's id, when it had a valid one


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def _depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` levels."""
    if limit < 0:
        return False
    if isinstance(value, dict):
        return all(_depth(v, limit - 1) for v in value.values())
    if isinstance(value, list):
        return all(_depth(v, limit - 1) for v in value)
    return True


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Connection:
    """One browser tab's socket: sends it the session's entries in order, and status."""

    def __init__(self, gateway: WebGateway, ws: web.WebSocketResponse, chat_id: str,
                 last: int) -> None:
        self.gateway = gateway
        self.ws = ws
        self.chat_id = chat_id
        self.session = session_id(CHANNEL, chat_id)
        self.id = secrets.token_hex(8)
        self.sent = last
        self.buffer: dict[int, str] = {}
        self.pending: list[str] = []  # sent client message ids the router has not taken yet
        self.busy = False
        self.closed = False
        self.locale: str | None = None
        self._kick = asyncio.Event()
        self._catch_up = True
        self._status_due = True
        self._shown_typing: bool | None = None
        self._shown_stack: str | None = None

    # -- what the history tells (synchronous: called by the history's reader)

    def on_entry(self, seq: int, raw: str) -> None:
        if seq <= self.sent:
            return
        self.buffer[seq] = raw
        # Typing can only be on while a message of this socket is pending or a chain runs;
        # the debug panel follows every entry.
        if self.busy or self.pending or self.gateway.config.debug:
            self._status_due = True
        self._kick.set()

    def on_takeover(self, conn_id: str) -> None:
        if conn_id != self.id and not self.closed:
            self.gateway.replaced(self)

    def kick(self, *, status: bool = False, catch_up: bool = False) -> None:
        self._status_due = self._status_due or status
        self._catch_up = self._catch_up or catch_up
        self._kick.set()

    # -- the pump: entries, then status

    async def pump(self) -> None:
        """Send entries in number order and status; catch up from the history on gaps."""
        while not self.closed:
            active = self.busy or bool(self.pending)
            try:
                await asyncio.wait_for(self._kick.wait(), 1.0 if active else IDLE_CHECK)
            except TimeoutError:
                # A chain that ended without a notice, or a channel message missed while
                # Redis reconnected: look again.
                self._catch_up = True
                self._status_due = active
            self._kick.clear()
            try:
                await self._send_entries()
                if self._status_due:
                    self._status_due = False
                    await self._send_status()
            except (ConnectionError, RuntimeError):
                return  # the socket closed under us
            except CloudBunchError as exc:
                log.warning("event=web_pump_failed session=%s error=%s", self.session, exc)
                await asyncio.sleep(1.0)
                self._catch_up = True

    async def _send_entries(self) -> None:
        if self._catch_up or (self.buffer and min(self.buffer) > self.sent + 1):
            self._catch_up = False
            for seq, raw in await self.gateway.history.after(self.session, self.sent):
                self.buffer.setdefault(seq, raw)
            if self.buffer and min(self.buffer) > self.sent + 1:
                first = min(self.buffer)
                await self.ws.send_str(_dumps({"type": "gap", "from": self.sent + 1,
                                               "to": first - 1}))
                self.sent = first - 1
        while self.sent + 1 in self.buffer:
            seq = self.sent + 1
            raw = self.buffer.pop(seq)
            await self.ws.send_str(f'{{"type":"entry","seq":{seq},"entry":{raw}}}')
            self.sent = seq
        for seq in [s for s in self.buffer if s <= self.sent]:
            del self.buffer[seq]

    async def _send_status(self) -> None:
        store = self.gateway.store
        if store is None:
            return
        while True:
            oldest = self.pending[0] if self.pending else None
            snap = await store.load(self.session, oldest)
            if oldest is not None and snap.seen:
                self.pending.pop(0)
                continue
            break
        rec = Record.decode(snap.record) if snap.record is not None else None
        self.busy = bool(snap.outbox) or (rec is not None and (
            rec.chain is not None or bool(rec.waiting) or bool(rec.held)))
        typing = self.busy or bool(self.pending)
        if typing != self._shown_typing:
            self._shown_typing = typing
            await self.ws.send_str(_dumps({"type": "typing", "on": typing}))
        if self.gateway.config.debug:
            frames = [{"depth": depth, "service": frame.service, "state": frame.state}
                      for depth, frame in enumerate(rec.stack if rec is not None else [])]
            turn = None
            if rec is not None and rec.turn is not None:
                turn = {"depth": rec.turn.depth, "event": rec.turn.event,
                        "attempt": rec.turn.attempt}
            stack = _dumps({"type": "stack", "frames": frames, "turn": turn,
                            "waiting": len(rec.waiting) if rec is not None else 0})
            if stack != self._shown_stack:
                self._shown_stack = stack
                await self.ws.send_str(stack)


class WebGateway:
    """Serves the page and the sockets; consumes the shared reply queue into the history."""

    def __init__(self, broker: Broker, history: History, config: WebConfig, *,
                 store: SessionStore | None = None) -> None:
        self.broker = broker
        self.history = history
        self.config = config
        self.store = store
        self.queue = notice_queue(config.namespace)
        # Sends only: the reply queue is consumed below, acknowledging after the history has
        # the notice (the Client acknowledges on arrival).
        self.client = Client(broker, config.namespace, self.queue, partitions=config.partitions)
        self.connections: dict[str, Connection] = {}  # by session
        self._tails: dict[str, asyncio.Future[None]] = {}
        self._consuming = False
        self.metrics = WebMetrics()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Declare and consume the shared reply queue (as a single active consumer)."""
        await self.history.start()
        await declare_notice_queue(self.broker, self.queue)
        await self.broker.consume(self.queue, self._on_delivery, prefetch=256)
        self._consuming = True

    async def stop(self) -> None:
        """Stop consuming (another replica takes over) and close every socket (1001: the
        pages reconnect, maybe to another replica)."""
        if self._consuming:
            self._consuming = False
            with contextlib.suppress(Exception):
                await self.broker.cancel(self.queue, drain=3.0)
        for conn in list(self.connections.values()):
            conn.closed = True
            with contextlib.suppress(Exception):
                await conn.ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway stopping")
        await self.history.close()

    def app(self) -> web.Application:
        """The aiohttp application: ``/`` the page, ``/static/...`` its assets, ``/ws``."""
        app = web.Application(middlewares=[_security_headers])
        app.router.add_get("/", self._page)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/ws", self._socket)
        app.router.add_get("/static/{name}", self._asset)
        return app

    # ------------------------------------------------------------------ notices in

    async def _on_delivery(self, delivery: Delivery) -> None:
        # Deliveries start as tasks in arrival order; each session's are appended in that
        # order (a chain of futures), different sessions' concurrently.
        try:
            notice = wire.Notice.from_wire(wire.decode(delivery.body))
        except wire.BadBody as exc:
            log.warning("event=bad_notice queue=%s reason=%s detail=%s", self.queue,
                        exc.reason, exc.detail)
            await delivery.ack()
            return
        loop = asyncio.get_running_loop()
        before = self._tails.get(notice.session)
        mine: asyncio.Future[None] = loop.create_future()
        self._tails[notice.session] = mine
        try:
            if before is not None:
                await asyncio.wait([before])
            activity = render(notice, CAPABILITIES).to_json()
            activity["from"] = "bot"
            activity["in_reply_to"] = notice.in_reply_to
            appended = await self.history.append(notice.session, "n:" + notice.id,
                                                 _dumps(activity))
            (self.metrics.relayed if appended.new else self.metrics.duplicates).inc()
        except BaseException:
            mine.set_result(None)
            raise
        else:
            mine.set_result(None)
        finally:
            if self._tails.get(notice.session) is mine:
                del self._tails[notice.session]
        await delivery.ack()

    # ------------------------------------------------------------------ HTTP

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=_asset_text("index.html"), content_type="text/html",
                            charset="utf-8")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = _ASSETS.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        return web.Response(text=_asset_text(name), content_type=kind, charset="utf-8")

    # ------------------------------------------------------------------ sockets

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        # max_msg_size is a hard cap (aiohttp closes with 1009 above it); max_frame, far
        # below it, is checked here so the page gets an error frame it can show.
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=max(
            self.config.max_frame * 16, 65536))
        await ws.prepare(request)
        try:
            conn = await self._hello(ws)
        except _Refused as refused:
            await _send_error(ws, refused)
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=refused.code.encode())
            return ws
        if conn is None:
            return ws
        pump = asyncio.create_task(conn.pump(), name=f"cloudbunch-web-{conn.id}")
        self.metrics.sockets.inc()
        try:
            await self._serve(conn)
        finally:
            self.metrics.sockets.dec()
            conn.closed = True
            conn.kick()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            if self.connections.get(conn.session) is conn:
                del self.connections[conn.session]
            with contextlib.suppress(Exception):
                await self.history.unlisten(conn.session, conn)
        return ws

    async def _hello(self, ws: web.WebSocketResponse) -> Connection | None:
        try:
            msg = await ws.receive(timeout=self.config.hello_timeout)
        except TimeoutError:
            raise _Refused("no_hello", "The page did not say hello in time.") from None
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        frame = self._parse(msg)
        if frame.get("type") != "hello":
            raise _Refused("bad_frame", 'The first frame must be {"type": "hello", ...}.')
        chat_id = frame.get("session")
        if chat_id is None or (isinstance(chat_id, str) and not _CHAT_ID.match(chat_id)):
            chat_id = secrets.token_urlsafe(18)
        elif not isinstance(chat_id, str):
            raise _Refused("bad_frame", "session must be a string or null.")
        last = frame.get("last", 0)
        if not isinstance(last, int) or isinstance(last, bool) or last < 0:
            raise _Refused("bad_frame", "last must be a whole number, 0 or more.")
        locale = frame.get("locale")
        conn = Connection(self, ws, chat_id, last)
        conn.locale = locale if isinstance(locale, str) and _LOCALE.match(locale) else None
        older = self.connections.get(conn.session)
        self.connections[conn.session] = conn
        if older is not None:
            self.replaced(older)
        await self.history.listen(conn.session, conn)
        await self.history.announce(conn.session, conn.id)
        await ws.send_str(_dumps({"type": "welcome", "session": chat_id,
                                  "debug": self.config.debug, "title": self.config.title,
                                  "max_text": self.config.max_text}))
        conn.kick(status=True, catch_up=True)
        return conn

    def replaced(self, conn: Connection) -> None:
        """Close a socket whose session was opened by a newer one."""
        if conn.closed:
            return
        conn.closed = True
        conn.kick()
        self.metrics.replaced.inc()
        if self.connections.get(conn.session) is conn:
            del self.connections[conn.session]
        asyncio.get_running_loop().create_task(conn.ws.close(
            code=CLOSE_REPLACED, message=b"opened in another tab"))

    async def _serve(self, conn: Connection) -> None:
        bucket = TokenBucket(self.config.rate, self.config.burst)
        refused = 0
        async for msg in conn.ws:
            if conn.closed:
                break
            msg_id: str | None = None
            try:
                frame = self._parse(msg)
                candidate = frame.get("id")
                if isinstance(candidate, str) and _MESSAGE_ID.match(candidate):
                    msg_id = candidate
                if not bucket.take():
                    raise _Refused("rate_limited", "You are sending messages too fast. "
                                                   "Wait a moment, then send it again.")
                await self._handle(conn, frame)
                refused = 0
            except _Refused as exc:
                exc.id = exc.id or msg_id
                self.metrics.refused.labels(exc.code).inc()
                refused += 1
                if refused >= self.config.flood:
                    log.warning("event=web_flood session=%s refused=%s", conn.session, refused)
                    await conn.ws.close(code=CLOSE_POLICY, message=b"too many refused frames")
                    break
                # One error frame per refused frame; a flood gets a few, not one per frame.
                if exc.code != "rate_limited" or refused <= 5:
                    await _send_error(conn.ws, exc)
            except CloudBunchError as exc:
                log.warning("event=web_send_failed session=%s error=%s", conn.session, exc)
                failed = _Refused("unavailable", "The bot is not reachable right now, so your "
                                                 "message was not sent. Try again in a moment.")
                failed.id = msg_id
                self.metrics.refused.labels(failed.code).inc()
                await _send_error(conn.ws, failed)

    def _parse(self, msg: Any) -> dict[str, Any]:
        if msg.type != WSMsgType.TEXT:
            raise _Refused("bad_frame", "Frames must be JSON text.")
        data: str = msg.data
        # Frames are at most max_msg_size (16 x max_frame): decoding one is cheap, and it
        # gives the refusal of an oversized message its id.
        try:
            frame = json.loads(data)
        except (ValueError, RecursionError):
            raise _Refused("bad_frame", "Frames must be JSON objects, like "
                                        '{"type": "message", "id": "...", "text": "hi"}.')\
                from None
        if not isinstance(frame, dict):
            raise _Refused("bad_frame", "Frames must be JSON objects.")
        size = len(data.encode("utf-8", "surrogatepass"))
        if size > self.config.max_frame:
            refused = _Refused("too_large", f"That message is too long ({size} bytes; the "
                                            f"limit is {self.config.max_frame}). Please "
                                            "shorten it.")
            candidate = frame.get("id")
            if isinstance(candidate, str) and _MESSAGE_ID.match(candidate):
                refused.id = candidate
            raise refused
        return frame

    async def _handle(self, conn: Connection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind not in ("message", "end"):
            raise _Refused("bad_frame", f"Unknown frame type {str(kind)[:20]!r}: expected "
                                        "'message' or 'end'.")
        msg_id = frame.get("id")
        if not isinstance(msg_id, str) or not _MESSAGE_ID.match(msg_id):
            raise _Refused("bad_frame", "id must be 8 to 64 letters, digits, '-' or '_'.")
        if kind == "end":
            entry = {"from": "you", "kind": "end", "text": "New conversation", "id": msg_id}
            await self.history.append(conn.session, "c:" + msg_id, _dumps(entry))
            await forward(self.client, Update(CHANNEL, conn.chat_id, msg_id, kind="end",
                                              user=conn.chat_id, locale=conn.locale))
            self.metrics.forwarded.inc()
            conn.kick(status=True)
            return
        text = frame.get("text")
        if not isinstance(text, str):
            raise _Refused("bad_frame", "text must be a string.")
        text = _CONTROL.sub("", text).strip()
        if not text:
            raise _Refused("empty", "Type a message first.")
        if len(text) > self.config.max_text:
            raise _Refused("too_large", f"That message is too long ({len(text)} characters; "
                                        f"the limit is {self.config.max_text}).")
        payload: Any = text
        if "payload" in frame:  # a pressed quick reply: the button's payload, its title shown
            payload = frame["payload"]
            if not _depth(payload, 8):
                raise _Refused("bad_frame", "A button payload may nest 8 levels at most.")
        entry = {"from": "you", "kind": "message", "text": text, "id": msg_id}
        appended = await self.history.append(conn.session, "c:" + msg_id, _dumps(entry),
                                             client=True)
        if msg_id not in conn.pending:
            conn.pending.append(msg_id)
        await forward(self.client, Update(CHANNEL, conn.chat_id, msg_id, payload,
                                          user=conn.chat_id, locale=conn.locale),
                      seq=appended.client_seq)
        self.metrics.forwarded.inc()
        conn.kick(status=True)


async def _send_error(ws: web.WebSocketResponse, refused: _Refused) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        frame = {"type": "error", "code": refused.code, "message": refused.message}
        if refused.id is not None:
            frame["id"] = refused.id
        await ws.send_str(_dumps(frame))


_ASSETS = {"chat.js": "application/javascript", "chat.css": "text/css",
           "index.html": "text/html"}
_asset_cache: dict[str, str] = {}


def _asset_text(name: str) -> str:
    text = _asset_cache.get(name)
    if text is None:
        text = resources.files(__package__).joinpath("static", name).read_text("utf-8")
        _asset_cache[name] = text
    return text


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'self'; base-uri 'none'; form-action 'none'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", "no-cache")
    return response
