"""Sessions by hand, for operators and privacy requests: list, history, export, delete.

Thin functions over the session store port (:class:`router.store.SessionStore`); the
``cloudbunch session`` commands print what they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import history
from .core import Record
from .store import SessionStore


@dataclass(frozen=True, slots=True)
class Summary:
    """One line of ``cloudbunch session list``."""

    session: str
    stack: tuple[str, ...]
    last_activity_ms: int
    busy: bool
    """A turn is in flight."""
    waiting: int


async def sample(store: SessionStore, limit: int) -> list[Summary]:
    """Up to ``limit`` sessions (a sample: SCAN order, not every session of a large store),
    most recently active first."""
    found = []
    async for blob in store.scan_records(limit):
        rec = Record.decode(blob)
        found.append(Summary(rec.session, tuple(f.service for f in rec.stack),
                             rec.activity_ms, rec.turn is not None, len(rec.waiting)))
    found.sort(key=lambda s: s.last_activity_ms, reverse=True)
    return found


async def entries(store: SessionStore, session: str) -> list[dict[str, Any]]:
    """The session's recorded history, oldest first."""
    return history.decode_entries(await store.history(session))


async def export(store: SessionStore, session: str, namespace: str) -> dict[str, Any]:
    """The session's history as an export document (see :func:`router.history.to_json`)."""
    return history.export(session, namespace, await entries(store, session))
