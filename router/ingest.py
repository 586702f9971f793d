"""Ingest: what the router makes of a body taken from a queue, before any I/O (pure).

A client message from ``NS.ingress`` becomes a ``ClientMessage`` to step, or a ``DeadLetter``
(with an error notice for its sender when the body names a session and a ``reply_to``). A
reply from ``NS.replies`` that names its session and turn becomes a ``ReplyArrived`` event,
even when the rest of it is invalid (the core decides what an invalid reply does to its
frame); one that does not name them becomes a ``DeadLetter``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from worker_sdk import wire

from .core import ReplyArrived


class DeadReason(StrEnum):
    """Why a body goes to ``NS.dead`` (the ``x-cb-reason`` header, guarantee 8)."""

    TOO_LARGE = "too_large"
    UNDECODABLE = "undecodable"
    INVALID = "invalid"
    INTERNAL = "internal"
    """The router itself failed on the delivery (a bug, not the body)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A body to publish unchanged to ``NS.dead``, and the notice its sender is owed, if any."""

    body: bytes
    reason: DeadReason
    detail: str
    source_queue: str
    notice: wire.Notice | None = None
    reply_to: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"x-cb-reason": str(self.reason), "x-cb-detail": self.detail,
                "x-cb-source-queue": self.source_queue}

    @property
    def message_id(self) -> str:
        """Stable: a redelivered copy of the same body is the same dead letter."""
        return "dead-" + hashlib.sha256(self.body).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ReplyFor:
    """A reply body that names its session: the event to step in that session."""

    session: str
    event: ReplyArrived


def dead_letter(body: bytes, problem: wire.BadBody, source_queue: str, *,
                reason: DeadReason | None = None) -> DeadLetter:
    """A dead letter for ``body``; the reason is the problem's unless given."""
    return DeadLetter(body, reason or DeadReason(problem.reason), problem.detail, source_queue)


def client_message(body: bytes, max_body: int, source_queue: str,
                   trace: wire.Trace | None = None) -> wire.ClientMessage | DeadLetter:
    """A body from ``NS.ingress``: a valid client message, or why it is not one. ``trace``
    (from its AMQP headers) goes with the message, or on the error notice it is owed."""
    oversized = len(body) > max_body
    try:
        obj = wire.decode(body)
    except wire.BadBody as exc:
        return dead_letter(body, _too_large(body, max_body) if oversized else exc, source_queue)
    try:
        if oversized:
            raise _too_large(body, max_body)
        message = wire.ClientMessage.from_wire(obj)
    except wire.BadBody as problem:
        letter = dead_letter(body, problem, source_queue)
        return _with_notice(letter, obj, trace)
    return replace(message, trace=trace) if trace else message


def reply(body: bytes, max_body: int, source_queue: str) -> ReplyFor | DeadLetter:
    """A body from ``NS.replies``: the event for its session, or why it cannot be routed."""
    oversized = len(body) > max_body
    try:
        obj = wire.decode(body)
    except wire.BadBody as exc:
        return dead_letter(body, _too_large(body, max_body) if oversized else exc, source_queue)
    session = obj.get("session") if isinstance(obj, dict) else None
    turn = obj.get("turn") if isinstance(obj, dict) else None
    if not isinstance(session, str) or not isinstance(turn, str):
        detail = ("the body is not a map" if not isinstance(obj, dict) else
                  "field 'session' and 'turn' must be strings to route the reply")
        problem = _too_large(body, max_body) if oversized else wire.BadBody("invalid", detail)
        return dead_letter(body, problem, source_queue)
    parsed: wire.Reply | None = None
    problem_or_none: wire.BadBody | None = None
    try:
        if oversized:
            raise _too_large(body, max_body)
        parsed = wire.Reply.from_wire(obj)
    except wire.BadBody as problem:
        problem_or_none = problem
    return ReplyFor(session, ReplyArrived(turn, parsed, problem_or_none, body, source_queue))


def _too_large(body: bytes, max_body: int) -> wire.BadBody:
    return wire.BadBody("too_large", f"body is {len(body)} bytes; max-body is {max_body}")


def _with_notice(letter: DeadLetter, obj: Any, trace: wire.Trace | None) -> DeadLetter:
    """Add the ``invalid_message`` error notice when the body says where to send it (a
    ``reply_to`` over 255 bytes cannot name a queue: no notice)."""
    if not isinstance(obj, dict):
        return letter
    session, reply_to, msg_id = obj.get("session"), obj.get("reply_to"), obj.get("id")
    if not wire.session_ok(session) or not wire.reply_to_ok(reply_to):
        return letter
    # Stable id: a redelivered copy of the same bad body yields the same notice id.
    nid = "inv-" + hashlib.sha256(session.encode() + b"\0" + letter.body).hexdigest()[:32]
    notice = wire.Notice(session, nid, msg_id if isinstance(msg_id, str) else "", "error",
                         error=wire.ErrorInfo("invalid_message", letter.detail), trace=trace)
    return DeadLetter(letter.body, letter.reason, letter.detail, letter.source_queue,
                      notice, reply_to)
