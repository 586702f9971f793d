"""How the deadline scanner names a step's span from what the step did (the spans themselves
are tested across processes in tests/integration/test_e2e_spans.py)."""

from __future__ import annotations

from typing import Any

from router.core import Outcome
from router.scanner import _describe

from .core_harness import Harness


class Span:
    def __init__(self) -> None:
        self.name = "deadline"
        self.attributes: dict[str, Any] = {}

    def update(self, name: str | None = None, **attributes: Any) -> None:
        self.name = name or self.name
        self.attributes.update({k: v for k, v in attributes.items() if v is not None})


def described(out: Outcome) -> Span:
    span = Span()
    _describe(span, out)  # type: ignore[arg-type]
    return span


def test_redispatch_then_timeout_of_a_child_then_of_the_root() -> None:
    h = Harness(max_attempts=2)
    h.send("hi")
    h.answer("open", service="child")
    child_turn = h.turn_id
    span = described(h.tick(1000))
    assert span.name == "redispatch"
    assert span.attributes == {"cloudbunch.turn": child_turn, "cloudbunch.attempt": 2,
                               "cloudbunch.depth": 1, "cloudbunch.event": "start",
                               "cloudbunch.service": "child"}
    span = described(h.tick(1000))  # the child's last attempt: its parent gets the failure
    assert span.name == "turn timeout"
    assert span.attributes["cloudbunch.service"] == "root"
    assert span.attributes["cloudbunch.event"] == "result"
    h.tick(1000)  # the root's result turn, attempt 2
    span = described(h.tick(1000))  # and its last: the error notice
    assert span.name == "turn timeout" and span.attributes == {}


def test_an_idle_timer() -> None:
    h = Harness()
    h.send("hi")
    h.answer("reply", idle=2)
    assert described(h.tick(1000)).name == "deadline"  # nothing due yet
    span = described(h.tick(1000))
    assert span.name == "idle timer"
    assert span.attributes["cloudbunch.timers_fired"] == 1
    assert span.attributes["cloudbunch.event"] == "idle"
    assert span.attributes["cloudbunch.attempt"] == 1
