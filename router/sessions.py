"""Sessions by hand, for operators and privacy requests: list, history, export, delete.

Thin functions over the session store port (:class:`router.store.SessionStore`); the
``cloudbunch session`` commands print what they return.
"""

from __future__ import annotations

import json
import sys
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


# ---------------------------------------------------------------------------- commands
# Each prints what a person asked for and returns the exit code.


async def print_history(store: SessionStore, session: str, *, as_json: bool = False,
                        states: bool = True) -> int:
    """``cloudbunch session history ID``: the transcript (or JSON lines with --json)."""
    items = await entries(store, session)
    if not items:
        print(f"session {session!r}: no history (never seen, expired, or the router runs "
              "with --history 0)", file=sys.stderr)
        return 1
    if as_json:
        for item in items:
            print(json.dumps(history._tagged(item), ensure_ascii=False))
    else:
        for line in history.transcript(items, states=states):
            print(line)
    return 0


async def write_export(store: SessionStore, session: str, namespace: str,
                       path: str | None) -> int:
    """``cloudbunch session export ID [-o FILE]``: the history as a replayable file."""
    document = await export(store, session, namespace)
    if not document["entries"]:
        print(f"session {session!r}: no history to export (never seen, expired, or the "
              "router runs with --history 0)", file=sys.stderr)
        return 1
    text = history.to_json(document)
    if path is None or path == "-":
        print(text)
    else:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        print(f"wrote {len(document['entries'])} entries of {session!r} to {path}",
              file=sys.stderr)
    return 0


async def delete(store: SessionStore, session: str) -> int:
    """``cloudbunch session delete ID``: everything of the session, at once."""
    if await store.delete_session(session):
        print(f"deleted session {session!r} (stack, waiting messages, timers, outbox, "
              "dedup memory and history)")
        return 0
    print(f"session {session!r}: nothing to delete (never seen, or expired)", file=sys.stderr)
    return 1


async def print_list(store: SessionStore, limit: int, now_ms: int) -> int:
    """``cloudbunch session list``: a sample of sessions, most recently active first."""
    found = await sample(store, limit)
    if not found:
        print("no sessions")
        return 0
    width = max(len(s.session) for s in found)
    for s in found:
        ago = max(0, now_ms - s.last_activity_ms) / 1000
        flags = " busy" if s.busy else ""
        flags += f" waiting={s.waiting}" if s.waiting else ""
        stack = " > ".join(s.stack) or "(empty)"
        print(f"{s.session:<{width}}  {_ago(ago):>9}  {stack}{flags}")
    if len(found) >= limit:
        print(f"(a sample of {limit}; raise --limit to see more)", file=sys.stderr)
    return 0


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
