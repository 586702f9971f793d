"""A web session's conversation as numbered entries, shared by every gateway replica.

Each entry (the person's message, or a notice as the page shows it) gets the next number of
its session, and the last ``keep`` entries are kept, so a page that reconnects (to any
replica) asks for the entries after the last number it showed and gets exactly those. An
entry is appended under a key (``c:`` + client message id, ``n:`` + notice id) and appended
once: a key seen among the session's last 1,000 appends returns the number it got.

Replicas learn about new entries and about a newer socket for a session by a per-session
message channel (:class:`Listener`); a listener that missed one catches up by number.

Two implementations: :class:`RedisHistory` (a Redis stream per session, entry ids ``0-N``,
expiring with the session) and :class:`MemoryHistory` (in process: the embedded demo).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker_sdk.errors import ConfigError
from worker_sdk.urls import redact

from ...redis_store import split_cluster_url
from ...store import StoreUnavailable

log = logging.getLogger(__name__)

DEDUP_KEYS = 1000
"""Append keys remembered per session (a repeated key returns its first number)."""


@dataclass(frozen=True, slots=True)
class Appended:
    """Where an append landed: the entry's number, the client message's ``seq`` (0 for a
    notice), and whether it is new (False: the key was appended before)."""

    seq: int
    client_seq: int
    new: bool


class Listener(Protocol):
    """What a replica's socket connection hears about its session."""

    def on_entry(self, seq: int, raw: str) -> None:
        """Entry ``seq`` was appended (``raw`` is its JSON)."""

    def on_takeover(self, conn_id: str) -> None:
        """A socket ``conn_id`` opened for this session (maybe on another replica)."""


class History:
    """The port; subclasses store entries. Listener bookkeeping is shared."""

    def __init__(self) -> None:
        self._listeners: dict[str, set[Listener]] = defaultdict(set)

    async def start(self) -> None:
        """Connect (and check the server answers)."""

    async def close(self) -> None:
        """Release connections."""

    async def append(self, session: str, key: str, raw: str, *,
                     client: bool = False) -> Appended:
        """Append entry ``raw`` under ``key`` once; ``client``: also count a client ``seq``."""
        raise NotImplementedError

    async def after(self, session: str, last: int) -> list[tuple[int, str]]:
        """The kept entries numbered above ``last``, in order."""
        raise NotImplementedError

    async def announce(self, session: str, conn_id: str) -> None:
        """Tell every replica that socket ``conn_id`` now holds ``session``."""
        raise NotImplementedError

    async def listen(self, session: str, listener: Listener) -> None:
        """Hear the session's entries and takeovers (until :meth:`unlisten`)."""
        first = not self._listeners[session]
        self._listeners[session].add(listener)
        if first:
            await self._subscribe(session)

    async def unlisten(self, session: str, listener: Listener) -> None:
        listeners = self._listeners.get(session)
        if listeners is None:
            return
        listeners.discard(listener)
        if not listeners:
            del self._listeners[session]
            await self._unsubscribe(session)

    async def _subscribe(self, session: str) -> None:
        """Start hearing ``session`` (hook)."""

    async def _unsubscribe(self, session: str) -> None:
        """Stop hearing ``session`` (hook)."""

    def _heard(self, session: str, message: str) -> None:
        """Hand one channel message (``e<seq> <json>`` or ``t<conn id>``) to the listeners."""
        listeners = self._listeners.get(session)
        if not listeners:
            return
        if message.startswith("e"):
            head, _, raw = message.partition(" ")
            try:
                seq = int(head[1:])
            except ValueError:
                log.warning("event=bad_channel_message session=%s", session)
                return
            for listener in list(listeners):
                listener.on_entry(seq, raw)
        elif message.startswith("t"):
            for listener in list(listeners):
                listener.on_takeover(message[1:])


# ------------------------------------------------------------------------------ memory


class MemoryHistory(History):
    """In process (the embedded demo, tests): entries live as long as the process."""

    def __init__(self, keep: int = 200) -> None:
        super().__init__()
        self.keep = keep
        self._entries: dict[str, deque[tuple[int, str, int]]] = defaultdict(
            lambda: deque(maxlen=self.keep))
        self._keys: dict[str, OrderedDict[str, tuple[int, int]]] = defaultdict(OrderedDict)
        self._counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    async def append(self, session: str, key: str, raw: str, *,
                     client: bool = False) -> Appended:
        keys = self._keys[session]
        if key in keys:
            seq, client_seq = keys[key]
            return Appended(seq, client_seq, False)
        counts = self._counts[session]
        counts[0] += 1
        if client:
            counts[1] += 1
        seq, client_seq = counts[0], counts[1] if client else 0
        self._entries[session].append((seq, raw, client_seq))
        keys[key] = (seq, client_seq)
        if len(keys) > DEDUP_KEYS:
            keys.popitem(last=False)
        self._heard(session, f"e{seq} {raw}")
        return Appended(seq, client_seq, True)

    async def after(self, session: str, last: int) -> list[tuple[int, str]]:
        return [(seq, raw) for seq, raw, _ in self._entries.get(session, ()) if seq > last]

    async def announce(self, session: str, conn_id: str) -> None:
        self._heard(session, f"t{conn_id}")


# ------------------------------------------------------------------------------ Redis

# KEYS: stream, keys (zset key -> number), counters (hash n, c).
# ARGV: key, raw, client (0/1), keep, ttl ms, channel, dedup size.
_APPEND = """
local function stored_cseq(n)
  local e = redis.call('XRANGE', KEYS[1], '0-' .. n, '0-' .. n)
  if e[1] then
    local f = e[1][2]
    for i = 1, #f, 2 do if f[i] == 'c' then return tonumber(f[i + 1]) end end
  end
  return nil
end
local old = redis.call('ZSCORE', KEYS[2], ARGV[1])
if old then
  local cseq = 0
  if ARGV[3] == '1' then
    cseq = stored_cseq(old) or redis.call('HINCRBY', KEYS[3], 'c', 1)
  end
  return {tonumber(old), cseq, 0}
end
local n = redis.call('HINCRBY', KEYS[3], 'n', 1)
local cseq = 0
if ARGV[3] == '1' then
  cseq = redis.call('HINCRBY', KEYS[3], 'c', 1)
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '0-' .. n, 'e', ARGV[2], 'c', cseq)
else
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[4], '0-' .. n, 'e', ARGV[2])
end
redis.call('ZADD', KEYS[2], n, ARGV[1])
local size = tonumber(ARGV[7])
if redis.call('ZCARD', KEYS[2]) > size then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(size + 1))
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
redis.call('PUBLISH', ARGV[6], 'e' .. n .. ' ' .. ARGV[2])
return {n, cseq, 1}
"""


class RedisHistory(History):
    """Entries in a Redis stream per session; new entries and takeovers by pub/sub.

    Keys (one hash tag per session, as the router's): ``NS:web:{tag}:s`` the stream,
    ``:k`` the append keys, ``:n`` the counters; channel ``NS:web:{tag}:w``. All expire
    ``ttl`` seconds after the session's last append. One server only: a Redis Cluster URL is
    refused (its pub/sub is not supported here yet).
    """

    def __init__(self, url: str, namespace: str, *, keep: int = 200,
                 ttl: float = 86400.0) -> None:
        super().__init__()
        if split_cluster_url(url) is not None:
            raise ConfigError("the web gateway needs one Redis server (redis:// or "
                              "rediss://), not a Redis Cluster URL; set --redis-url or "
                              "CLOUDBUNCH_REDIS_URL")
        self._url = url
        self._ns = namespace
        self.keep = keep
        self._ttl_ms = max(1, int(ttl * 1000))
        self._redis: Redis = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10,
                                            health_check_interval=30)
        self._append = self._redis.register_script(_APPEND)
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._channels: dict[str, str] = {}  # channel -> session
        self._subscribed = asyncio.Event()

    def _base(self, session: str) -> str:
        digest = hashlib.sha256(session.encode()).digest()[:16]
        tag = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        return f"{self._ns}:web:{{{tag}}}"

    def _keys(self, session: str) -> list[str]:
        base = self._base(session)
        return [f"{base}:s", f"{base}:k", f"{base}:n"]

    def _channel(self, session: str) -> str:
        return f"{self._base(session)}:w"

    def _unavailable(self, error: BaseException) -> StoreUnavailable:
        text = str(error).strip().splitlines()
        return StoreUnavailable(f"Redis is not reachable at {redact(self._url)}: "
                                f"{text[0] if text else type(error).__name__}; start it or "
                                "set CLOUDBUNCH_REDIS_URL")

    async def start(self) -> None:
        try:
            await self._redis.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise self._unavailable(error) from error
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        self._reader = asyncio.create_task(self._read(), name="cloudbunch-web-history")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._redis.aclose()

    async def append(self, session: str, key: str, raw: str, *,
                     client: bool = False) -> Appended:
        try:
            seq, client_seq, new = await self._append(
                keys=self._keys(session),
                args=[key, raw, "1" if client else "0", self.keep, self._ttl_ms,
                      self._channel(session), DEDUP_KEYS])
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise self._unavailable(error) from error
        return Appended(int(seq), int(client_seq), bool(new))

    async def after(self, session: str, last: int) -> list[tuple[int, str]]:
        try:
            rows: Any = await self._redis.xrange(self._keys(session)[0], f"0-{last + 1}", "+")
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise self._unavailable(error) from error
        out: list[tuple[int, str]] = []
        for entry_id, fields in rows:
            seq = int(entry_id.split(b"-", 1)[1])
            out.append((seq, fields[b"e"].decode()))
        return out

    async def announce(self, session: str, conn_id: str) -> None:
        try:
            await self._redis.publish(self._channel(session), f"t{conn_id}")
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise self._unavailable(error) from error

    async def _subscribe(self, session: str) -> None:
        channel = self._channel(session)
        self._channels[channel] = session
        await self._pubsub.subscribe(channel)
        self._subscribed.set()

    async def _unsubscribe(self, session: str) -> None:
        channel = self._channel(session)
        self._channels.pop(channel, None)
        if not self._channels:
            self._subscribed.clear()
        with contextlib.suppress(RedisError, OSError):
            await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        # A lost connection is re-established (and re-subscribed) by redis-py; entries
        # published meanwhile are caught up by the connections' periodic catch-up.
        while True:
            if not self._channels:
                await self._subscribed.wait()
                continue
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                log.warning("event=history_channel_lost error=%s", error)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"].decode()
            session = self._channels.get(channel)
            if session is not None:
                self._heard(session, message["data"].decode())
