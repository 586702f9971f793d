"""The session store port, and the in-memory adapter (embedded engine, test kit).

A session lives in three places that change together: its record (an opaque msgpack blob
with a version number), its outbox (encoded effects not yet known to be published, in
order) and its dedup memory (the ids of its last client messages). A deadline index of
hints ("look at session S at time T") sits beside them. The Redis adapter is
:mod:`router.redis_store`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from worker_sdk.errors import CloudBunchError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
"""Where the router finds Redis unless told otherwise (--redis-url, CLOUDBUNCH_REDIS_URL)."""

DEDUP_MEMORY = 1000
"""How many client message ids a session remembers, at least (contract guarantee 4)."""


class StoreUnavailable(CloudBunchError):
    """The session store could not be reached, or failed a command (transient: retry later).

    Adapters raise it for every failure of the store itself, so callers never need to
    recognise a driver's own exceptions.
    """


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One consistent read of a session."""

    version: int
    """0 when the session has no record."""
    record: bytes | None
    outbox: list[bytes] = field(default_factory=list)
    seen: bool = False
    """Whether the dedup id asked for in ``load`` is remembered."""


class SessionStore(Protocol):
    """Where session records, outboxes, dedup memory and deadline hints live."""

    async def load(self, session: str, dedup_id: str | None = None) -> Snapshot:
        """Read record, version, outbox and (if ``dedup_id``) whether that id was seen."""

    async def commit(self, session: str, expected_version: int, record: bytes, *,
                     append: Sequence[bytes] = (), remember: str | None = None,
                     expire_at_ms: int, hint_ms: int | None = None,
                     history: Sequence[bytes] = (), history_max: int = 0) -> bool:
        """Compare-and-set: if the version is still ``expected_version`` and ``remember`` is
        not remembered yet, write the record (version + 1), append ``append`` to the outbox,
        remember ``remember`` (keeping the last DEDUP_MEMORY ids), append ``history`` to the
        session's history keeping its last ``history_max`` entries (none when 0), and make
        every key of the session expire at ``expire_at_ms``; all atomically. Return False
        (and change nothing) otherwise.

        ``hint_ms``, if given, is written to the deadline index *before* the atomic part.
        """

    async def discard(self, session: str, entries: Sequence[bytes], *,
                      unhint_ms: int | None = None) -> None:
        """Remove exactly these entries (one occurrence each) from the outbox; and if
        ``unhint_ms`` is given, remove the session's hint if it still equals that (the
        session's deadline was just cleared)."""

    async def add_hint(self, session: str, due_ms: int) -> None:
        """Set the session's deadline hint to ``due_ms``."""

    async def claim_due(self, now_ms: int, lease_ms: int,
                        limit: int = 100) -> list[tuple[str, int]]:
        """Claim hints due at ``now_ms``: move each to ``now_ms + lease_ms`` (plus a unique
        offset) and return ``(session, lease)``; a replica that dies holding one lets it
        fire again when the lease is up."""

    async def settle_hint(self, session: str, lease: int, due_ms: int | None) -> None:
        """If the hint still equals ``lease``: set it to ``due_ms``, or remove it if None."""

    async def history(self, session: str) -> list[bytes]:
        """The session's history entries, oldest first."""

    async def delete_session(self, session: str) -> bool:
        """Delete everything of one session atomically; True if it existed."""

    def scan_records(self, limit: int) -> AsyncIterator[bytes]:
        """Up to ``limit`` stored records, in no particular order, without long blocking."""

    async def note_queues(self, queues: Collection[str]) -> None:
        """Remember queue names of the namespace the router published to (service queues,
        frontends' reply queues), so that tools find them after the sessions are gone."""

    async def known_queues(self) -> set[str]:
        """Every queue name :meth:`note_queues` was given."""

    async def replicas(self, replica: str, now_ms: int, ttl_ms: int) -> list[str]:
        """Say ``replica`` is alive until ``now_ms + ttl_ms`` (``ttl_ms`` <= 0: gone now);
        return the ids of every replica alive at ``now_ms``, sorted."""

    async def ping(self) -> None:
        """Raise StoreUnavailable if the store does not answer."""

    async def close(self) -> None:
        """Release connections."""


@dataclass(slots=True)
class _Session:
    version: int
    record: bytes
    expire_at_ms: int
    outbox: list[bytes] = field(default_factory=list)
    seen: dict[str, None] = field(default_factory=dict)
    """Remembered ids in insertion order (a dict is an ordered set)."""
    history: list[bytes] = field(default_factory=list)


class MemoryStore:
    """A SessionStore in process memory, with the semantics of the Redis adapter.

    Expiry follows ``clock`` (seconds, like :func:`time.time`): an expired session vanishes
    on its next access. Every call yields to the event loop once before its atomic part, so
    concurrent callers interleave as they would against a server.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sessions: dict[str, _Session] = {}
        self._hints: dict[str, int] = {}
        self._queues: set[str] = set()
        self._replicas: dict[str, int] = {}
        self._last_lease = 0
        self.changed = asyncio.Event()
        """Set by every commit and discard (whoever waits on it clears it)."""

    def _now_ms(self) -> float:
        return self._clock() * 1000

    def _get(self, session: str) -> _Session | None:
        state = self._sessions.get(session)
        # Like Redis: a key lives through its expiry millisecond and is gone after it.
        if state is not None and self._now_ms() > state.expire_at_ms:
            del self._sessions[session]
            return None
        return state

    async def load(self, session: str, dedup_id: str | None = None) -> Snapshot:
        """Read record, version, outbox and (if ``dedup_id``) whether that id was seen."""
        await asyncio.sleep(0)
        state = self._get(session)
        if state is None:
            return Snapshot(version=0, record=None)
        return Snapshot(version=state.version, record=state.record, outbox=list(state.outbox),
                        seen=dedup_id is not None and dedup_id in state.seen)

    async def commit(self, session: str, expected_version: int, record: bytes, *,
                     append: Sequence[bytes] = (), remember: str | None = None,
                     expire_at_ms: int, hint_ms: int | None = None,
                     history: Sequence[bytes] = (), history_max: int = 0) -> bool:
        """Compare-and-set the record, append to the outbox, remember an id, set expiry."""
        await asyncio.sleep(0)
        if hint_ms is not None:
            self._hints[session] = hint_ms
        state = self._get(session)
        if (state.version if state is not None else 0) != expected_version:
            return False
        if state is not None and remember is not None and remember in state.seen:
            return False
        if state is None:
            state = self._sessions[session] = _Session(0, b"", expire_at_ms)
        state.version += 1
        state.record = bytes(record)
        state.outbox.extend(bytes(entry) for entry in append)
        if history_max > 0 and history:
            state.history.extend(bytes(entry) for entry in history)
            del state.history[:-history_max]
        if remember is not None:
            state.seen[remember] = None
            while len(state.seen) > DEDUP_MEMORY:
                del state.seen[next(iter(state.seen))]
        state.expire_at_ms = expire_at_ms
        if expire_at_ms <= self._now_ms():  # PEXPIREAT in the past deletes at once
            del self._sessions[session]
        self.changed.set()
        return True

    async def discard(self, session: str, entries: Sequence[bytes], *,
                      unhint_ms: int | None = None) -> None:
        """Remove exactly these entries (one occurrence each) from the outbox; and if
        ``unhint_ms`` is given, remove the session's hint if it still equals that."""
        await asyncio.sleep(0)
        if unhint_ms is not None and self._hints.get(session) == unhint_ms:
            del self._hints[session]
        state = self._get(session)
        if state is None:
            return
        for entry in entries:
            if entry in state.outbox:
                state.outbox.remove(entry)
        self.changed.set()

    async def add_hint(self, session: str, due_ms: int) -> None:
        """Set the session's deadline hint to ``due_ms``."""
        await asyncio.sleep(0)
        self._hints[session] = due_ms

    async def claim_due(self, now_ms: int, lease_ms: int,
                        limit: int = 100) -> list[tuple[str, int]]:
        """Claim due hints: move each to a unique lease past ``now_ms + lease_ms``."""
        await asyncio.sleep(0)
        due = sorted((score, session) for session, score in self._hints.items()
                     if score <= now_ms)[:max(limit, 0)]
        claimed: list[tuple[str, int]] = []
        for _, session in due:
            # Leases strictly increase, so no two claims share one (see settle_hint).
            lease = max(now_ms + lease_ms, self._last_lease + 1)
            self._last_lease = lease
            self._hints[session] = lease
            claimed.append((session, lease))
        return claimed

    async def settle_hint(self, session: str, lease: int, due_ms: int | None) -> None:
        """If the hint still equals ``lease``: set it to ``due_ms``, or remove it if None."""
        await asyncio.sleep(0)
        if self._hints.get(session) != lease:
            return
        if due_ms is None:
            del self._hints[session]
        else:
            self._hints[session] = due_ms

    def next_due_ms(self) -> int | None:
        """The earliest deadline hint (the test kit's virtual clock jumps to it)."""
        return min(self._hints.values(), default=None)

    async def history(self, session: str) -> list[bytes]:
        """The session's history entries, oldest first."""
        await asyncio.sleep(0)
        state = self._get(session)
        return [] if state is None else list(state.history)

    async def delete_session(self, session: str) -> bool:
        """Delete everything of one session; True if it existed."""
        await asyncio.sleep(0)
        self._hints.pop(session, None)
        existed = self._get(session) is not None
        self._sessions.pop(session, None)
        return existed

    async def scan_records(self, limit: int) -> AsyncIterator[bytes]:
        """Up to ``limit`` stored records."""
        for name in list(self._sessions)[:max(limit, 0)]:
            state = self._get(name)
            if state is not None:
                yield state.record

    async def note_queues(self, queues: Collection[str]) -> None:
        await asyncio.sleep(0)
        self._queues.update(queues)

    async def known_queues(self) -> set[str]:
        await asyncio.sleep(0)
        return set(self._queues)

    async def replicas(self, replica: str, now_ms: int, ttl_ms: int) -> list[str]:
        await asyncio.sleep(0)
        if ttl_ms > 0:
            self._replicas[replica] = now_ms + ttl_ms
        else:
            self._replicas.pop(replica, None)
        self._replicas = {r: until for r, until in self._replicas.items() if until > now_ms}
        return sorted(self._replicas)

    async def ping(self) -> None:
        """Always answers."""

    async def close(self) -> None:
        """Nothing to release."""

    async def ttl_ms(self, session: str) -> int:
        """Milliseconds until the session expires; -2 if it does not exist."""
        state = self._get(session)
        return -2 if state is None else int(state.expire_at_ms - self._now_ms())
