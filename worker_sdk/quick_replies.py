"""Quick replies: an output element with buttons, and how frontends read it.

The payload convention (docs/protocol.md, "Payload conventions"): an output element that is a
map with a string ``text`` and a list ``buttons`` is a message with quick replies. Each button
is a string (its title, also sent back when pressed) or a map ``{"title": str, "payload":
any}``. A frontend that can show buttons shows them, and when one is pressed sends its
payload as the next client message's ``payload``; a frontend that cannot shows the text and
the titles, and the person types one. So a service that offers buttons should accept the
titles typed as text too.

    ctx.reply(quick_replies("Which size?", "small", "medium", "large"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Button", "Output", "plain_text", "quick_replies", "read_output"]


@dataclass(frozen=True, slots=True)
class Button:
    """One quick reply: what it shows, and what pressing it sends."""

    title: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Output:
    """An output element as a frontend shows it: text, and buttons (maybe none)."""

    text: str
    buttons: tuple[Button, ...] = ()


def quick_replies(text: str, *buttons: str | tuple[str, Any] | Button) -> dict[str, Any]:
    """An output element with quick-reply buttons.

    Each button is a title (pressing it sends the title), a ``(title, payload)`` pair, or a
    :class:`Button`.
    """
    if not isinstance(text, str):
        raise TypeError(f"quick_replies text must be a string, not {type(text).__name__}")
    out: list[Any] = []
    for button in buttons:
        if isinstance(button, str):
            out.append(button)
        elif isinstance(button, Button):
            out.append({"title": button.title, "payload": button.payload})
        elif isinstance(button, tuple) and len(button) == 2 and isinstance(button[0], str):
            out.append({"title": button[0], "payload": button[1]})
        else:
            raise TypeError(f"a button is a title, a (title, payload) pair or a Button, "
                            f"not {button!r}")
    return {"text": text, "buttons": out}


def _button(item: Any) -> Button | None:
    if isinstance(item, str) and item:
        return Button(item, item)
    if isinstance(item, dict) and isinstance(item.get("title"), str) and item["title"]:
        return Button(item["title"], item.get("payload", item["title"]))
    return None


def read_output(payload: Any) -> Output:
    """Read an output notice's payload: a string, a quick-reply map, or anything else
    (shown as its text form). Malformed buttons are left out."""
    if isinstance(payload, str):
        return Output(payload)
    if isinstance(payload, dict) and isinstance(payload.get("text"), str):
        raw = payload.get("buttons")
        items: Sequence[Any] = raw if isinstance(raw, list) else ()
        buttons = tuple(b for b in (_button(item) for item in items) if b is not None)
        return Output(payload["text"], buttons)
    if payload is None:
        return Output("")
    return Output(repr(payload))


def plain_text(payload: Any) -> str:
    """The payload as one text, for a frontend without buttons: ``text [a] [b]``."""
    output = read_output(payload)
    if not output.buttons:
        return output.text
    titles = " ".join(f"[{b.title}]" for b in output.buttons)
    return f"{output.text} {titles}" if output.text else titles
