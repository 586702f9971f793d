"""Session history: what each step of a session did, as entries a person or a tool can read.

Pure: :func:`entries` turns one applied step (the record before, the event, the outcome) into
history entries; the shell stores them with the commit (bounded per session, expiring with
it), ``cloudbunch session history`` prints them as a transcript, ``cloudbunch session export``
writes them to a file, and :mod:`router.replay` runs their client messages through new code.

Two kinds of entry, each a map:

- ``{"kind": "client", "at": ms, "message": <client message as on the wire>}``: a client
  message the router accepted (a duplicate id is not recorded);
- ``{"kind": "turn", "at": ms, "service", "depth", "event", "attempt", "dispatch": <the
  dispatch body without its state (an earlier reply saved it)>, "reply": <the reply as on
  the wire> or nil, "problem": <why the reply was invalid> or nil, "stack": [service names
  after the step]}``: a turn that was decided by a reply. Turns the router decided itself
  (a timeout, a refused open) show in the next turn's dispatch (its ``result``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from typing import Any, Final

import msgpack

from worker_sdk import wire

from .core import ClientArrived, Event, Outcome, Record, ReplyArrived

FORMAT: Final = "cloudbunch-session"
FORMAT_VERSION: Final = 1


def entries(before: Record | None, event: Event, outcome: Outcome, now_ms: int) -> list[bytes]:
    """The encoded history entries of one applied step (none when it changed nothing)."""
    if not outcome.changed or outcome.record is None:
        return []
    match event:
        case ClientArrived(message, seen) if not seen:
            return [wire.encode({"kind": "client", "at": now_ms, "message": message.to_wire()})]
        case ReplyArrived(turn_id, reply, problem):
            turn = before.turn if before is not None else None
            if turn is None or turn.id != turn_id or before is None:
                return []
            frame = before.stack[turn.depth] if turn.depth < len(before.stack) else None
            return [wire.encode({
                "kind": "turn", "at": now_ms,
                "service": frame.service if frame is not None else None,
                "depth": turn.depth, "event": turn.event, "attempt": turn.attempt,
                # The state it carried is the one an earlier entry's reply saved.
                "dispatch": {k: v for k, v in turn.dispatch.to_wire().items()
                             if k not in ("state", "attempt")},
                "reply": reply.to_wire() if reply is not None else None,
                "problem": None if problem is None else f"{problem.reason}: {problem.detail}",
                "stack": [f.service for f in outcome.record.stack],
            })]
    return []


def decode_entries(blobs: Iterable[bytes]) -> list[dict[str, Any]]:
    """Stored entries, oldest first, as maps."""
    return [msgpack.unpackb(b, raw=False, strict_map_key=False) for b in blobs]


# ---------------------------------------------------------------------------- files


class BadExport(ValueError):
    """A file that is not a session export of a format this version reads."""


def export(session: str, namespace: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The exported form of a session's history (JSON-ready; see :func:`to_json`)."""
    return {"format": FORMAT, "version": FORMAT_VERSION, "session": session,
            "namespace": namespace, "entries": items}


def to_json(document: Any) -> str:
    """JSON text for an export; bytes and msgpack extension values are tagged, not lost."""
    return json.dumps(_tagged(document), ensure_ascii=False, indent=1)


def from_json(text: str, where: str = "the file") -> dict[str, Any]:
    """Read an export written by :func:`to_json`; BadExport with one line if it is not one."""
    try:
        document = _untagged(json.loads(text))
    except (json.JSONDecodeError, ValueError, TypeError) as exc:
        raise BadExport(f"{where} is not a CloudBunch session export: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BadExport(f"{where} is not a CloudBunch session export (no \"format\": "
                        f"\"{FORMAT}\"); write one with `cloudbunch session export ID`")
    if document.get("version") != FORMAT_VERSION:
        raise BadExport(f"{where} is a session export of version {document.get('version')!r}; "
                        f"this CloudBunch reads version {FORMAT_VERSION}")
    if not isinstance(document.get("entries"), list) or not isinstance(
            document.get("session"), str):
        raise BadExport(f"{where}: an export needs a \"session\" string and an \"entries\" list")
    return document


def _tagged(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _tagged(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tagged(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, msgpack.Timestamp):
        return {"$timestamp": value.to_unix_nano()}
    if isinstance(value, msgpack.ExtType):
        return {"$ext": [value.code, base64.b64encode(value.data).decode()]}
    return value


def _untagged(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1:
            if "$bytes" in value:
                return base64.b64decode(value["$bytes"])
            if "$timestamp" in value:
                return msgpack.Timestamp.from_unix_nano(value["$timestamp"])
            if "$ext" in value:
                code, data = value["$ext"]
                return msgpack.ExtType(code, base64.b64decode(data))
        return {k: _untagged(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untagged(v) for v in value]
    return value


# ---------------------------------------------------------------------------- transcript


def transcript(items: list[dict[str, Any]], *, states: bool = True) -> list[str]:
    """A readable transcript: one line per client message and per turn."""
    import datetime as dt

    lines = []
    for item in items:
        at = dt.datetime.fromtimestamp(item.get("at", 0) / 1000, dt.UTC)
        clock = at.strftime("%Y-%m-%d %H:%M:%S.") + f"{at.microsecond // 1000:03d}"
        if item.get("kind") == "client":
            msg = item.get("message") or {}
            what = "end" if msg.get("type") == "end" else f"says {_short(msg.get('payload'))}"
            lines.append(f"{clock}  client   {what}  (id {msg.get('id')})")
            continue
        if item.get("kind") != "turn":
            continue
        reply = item.get("reply")
        head = (f"{clock}  {'  ' * int(item.get('depth') or 0)}{item.get('service')} "
                f"<- {item.get('event')}")
        if item.get("event") == "result":
            head += f" {_short((item.get('dispatch') or {}).get('result'))}"
        elif item.get("event") in ("message", "idle"):
            head += f" {_short((item.get('dispatch') or {}).get('payload'))}"
        if reply is None:
            lines.append(f"{head} -> invalid reply ({item.get('problem')})")
            continue
        action = reply.get("action")
        target = reply.get("service")
        tail = f" -> {action}" + (f" {target}" if target else "")
        if action == "close":
            tail += f" {_short(reply.get('result'))}"
        if action == "fail":
            tail += f" {_short(reply.get('error'))}"
        if states and "state" in reply:
            tail += f"  state={_short(reply['state'])}"
        lines.append(head + tail)
        for output in reply.get("output") or []:
            lines.append(f"{' ' * 25}> {_short(output, 200)}")
        lines.append(f"{' ' * 25}  stack: {' > '.join(item.get('stack') or []) or '(empty)'}")
    return lines


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(_tagged(value), ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[: limit - 1] + "…"
