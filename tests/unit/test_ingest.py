"""Ingest, pure: a body from a queue becomes an event to step or a dead letter with a reason."""

from __future__ import annotations

from router import ingest
from router.ingest import DeadLetter, DeadReason, ReplyFor
from worker_sdk import wire

MAX = 1000


def test_a_valid_client_message_is_returned_as_is() -> None:
    msg = wire.ClientMessage("s", "m1", "fe", payload="hi")
    assert ingest.client_message(wire.encode(msg.to_wire()), MAX, "ns.ingress") == msg


def test_undecodable_and_oversized_bodies_are_dead_letters_with_their_reason() -> None:
    got = ingest.client_message(b"\xc1", MAX, "ns.ingress")
    assert isinstance(got, DeadLetter) and got.reason is DeadReason.UNDECODABLE
    assert got.headers["x-cb-source-queue"] == "ns.ingress"
    big = wire.encode(wire.ClientMessage("s", "m1", "fe", payload="x" * MAX).to_wire())
    got = ingest.client_message(big, MAX, "ns.ingress")
    assert isinstance(got, DeadLetter) and got.reason is DeadReason.TOO_LARGE
    assert got.headers["x-cb-reason"] == "too_large"


def test_an_invalid_client_message_owes_its_sender_an_error_notice() -> None:
    body = wire.encode({"v": 1, "session": "s", "id": "m1", "reply_to": "fe", "seq": "x"})
    got = ingest.client_message(body, MAX, "ns.ingress")
    assert isinstance(got, DeadLetter) and got.reason is DeadReason.INVALID
    assert got.reply_to == "fe" and got.notice is not None
    assert got.notice.type == "error" and got.notice.in_reply_to == "m1"
    assert got.notice.error is not None and got.notice.error.code == "invalid_message"
    # The same body twice is the same dead letter and the same notice (ids are stable).
    assert ingest.client_message(body, MAX, "ns.ingress") == got


def test_an_invalid_client_message_without_a_reply_to_owes_no_notice() -> None:
    got = ingest.client_message(wire.encode({"v": 1, "session": "s"}), MAX, "ns.ingress")
    assert isinstance(got, DeadLetter) and got.notice is None


def test_a_reply_naming_session_and_turn_is_an_event_even_when_invalid() -> None:
    body = wire.encode({"v": 1, "session": "s", "turn": "t1", "action": "nonsense"})
    got = ingest.reply(body, MAX, "ns.replies")
    assert isinstance(got, ReplyFor) and got.session == "s"
    assert got.event.turn == "t1" and got.event.reply is None
    assert got.event.problem is not None and got.event.raw == body
    assert got.event.source_queue == "ns.replies"


def test_a_reply_that_cannot_be_routed_is_a_dead_letter() -> None:
    got = ingest.reply(wire.encode({"v": 1, "session": "s"}), MAX, "ns.replies")
    assert isinstance(got, DeadLetter) and got.reason is DeadReason.INVALID
    assert "'session' and 'turn'" in got.detail
    got = ingest.reply(wire.encode([1, 2]), MAX, "ns.replies")
    assert isinstance(got, DeadLetter) and got.detail == "the body is not a map"
