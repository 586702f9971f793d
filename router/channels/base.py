"""The shape every channel adapter (gateway) has: updates in, activities out.

A gateway connects one messaging platform (the web page, Telegram, a terminal) to CloudBunch.
It does two things, and this module gives both one shape (after Rasa's input and output
channels and Bot Framework's activities, kept small):

- **In**: it turns what the platform sent into an :class:`Update` (which chat, which platform
  message, what the person said or pressed, who and in what language) and forwards it with
  :func:`forward`: the session is ``"{channel}:{chat id}"``, the platform's message id is the
  client message ``id`` (so a platform that delivers an update twice causes one chain), and
  ``meta`` carries ``channel``, ``user`` and ``locale`` to the services.
- **Out**: it turns each notice into an :class:`Activity` with :func:`render`, for what the
  channel can do (:class:`Capabilities`: buttons, typing, markdown); what it cannot do is
  degraded to text. An :class:`OutputChannel` shows activities; its defaults do the degrading,
  so a text-only channel implements :meth:`OutputChannel.send_text` and nothing else.

``end`` and ``error`` notices become sentences a person understands (:func:`describe_error`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from worker_sdk import wire
from worker_sdk.broker import Broker
from worker_sdk.client import Client
from worker_sdk.errors import ConfigError
from worker_sdk.quick_replies import Button, plain_text, read_output

__all__ = [
    "TEXT_ONLY",
    "Activity",
    "Button",
    "Capabilities",
    "OutputChannel",
    "Update",
    "declare_notice_queue",
    "describe_error",
    "forward",
    "gateway_queues",
    "render",
    "session_id",
    "split_session",
]

_CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a channel can show besides plain text."""

    buttons: bool = False
    """Quick-reply buttons (else their titles are appended to the text)."""
    typing: bool = False
    """A "typing..." indicator while the person's message is being handled."""
    markdown: bool = False
    """Markdown in text (else an output marked as markdown is shown as its plain source)."""


TEXT_ONLY = Capabilities()


def session_id(channel: str, chat_id: str | int) -> str:
    """The session of one chat of a channel: ``"{channel}:{chat id}"``.

    Raises ValueError for a channel name that is not a short lowercase word or a session over
    the contract's 256 code points.
    """
    if not _CHANNEL_NAME.match(channel):
        raise ValueError(f"channel name must be a lowercase word (a-z, 0-9, _ or -), "
                         f"not {channel!r}")
    chat = str(chat_id)
    if not chat:
        raise ValueError("chat id must not be empty")
    session = f"{channel}:{chat}"
    if len(session) > wire.MAX_SESSION_LEN:
        raise ValueError(f"session {session[:40]!r}... is longer than "
                         f"{wire.MAX_SESSION_LEN} characters")
    return session


def split_session(session: str) -> tuple[str, str]:
    """The channel and chat id of a session made by :func:`session_id`."""
    channel, sep, chat = session.partition(":")
    if not sep or not _CHANNEL_NAME.match(channel) or not chat:
        raise ValueError(f"{session!r} is not a channel session (\"channel:chat id\")")
    return channel, chat


@dataclass(frozen=True, slots=True)
class Update:
    """What the person did on the platform, as a gateway hands it on (the inbound activity).

    ``kind`` ``message`` carries ``payload`` (typed text, or a pressed button's payload);
    ``end`` asks to end the conversation ("new conversation").
    """

    channel: str
    chat_id: str
    message_id: str
    payload: Any = None
    kind: Literal["message", "end"] = "message"
    user: str | None = None
    locale: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """More ``meta`` for the services (platform specifics); never overrides the fields above."""

    @property
    def session(self) -> str:
        return session_id(self.channel, self.chat_id)

    def meta(self) -> dict[str, Any]:
        """The client message's ``meta``: extra, then channel, user and locale when known."""
        meta = dict(self.extra)
        meta["channel"] = self.channel
        if self.user is not None:
            meta["user"] = self.user
        if self.locale is not None:
            meta["locale"] = self.locale
        return meta


def gateway_queues(namespace: str) -> list[str]:
    """The notice queues of this package's gateways in ``namespace`` (web, Telegram)."""
    return [f"{namespace}.web.notices", f"{namespace}.client.telegram"]


async def declare_notice_queue(broker: Broker, queue: str) -> None:
    """Declare a gateway's notice queue: durable, one active consumer at a time (in order;
    another replica takes over when it goes).

    A new queue takes the broker's queue type (quorum by default), so that on a RabbitMQ
    cluster it has a member on every node and outlives the loss of any one with the notices
    in it. A queue that exists is used as it is (an older gateway's classic queue stays
    classic: delete it, while no gateway runs, to have it made again as a quorum queue).
    """
    try:
        await broker.declare_own(queue, durable=True, single_active=True, replicated=True)
    except ConfigError:  # it exists with other arguments: an older gateway's classic queue
        await broker.declare_own(queue, durable=True, single_active=True)


async def forward(client: Client, update: Update, *, seq: int | None = None) -> str:
    """Send an update as a client message (``seq`` as given, else the client's count)."""
    if update.kind == "end":
        return await client.end(update.session, id=update.message_id)
    return await client.send(update.session, update.payload, id=update.message_id,
                             meta=update.meta(), seq=seq)


@dataclass(frozen=True, slots=True)
class Activity:
    """What to show the person for one notice (the outbound activity).

    ``kind``: ``message`` (an output), ``end`` (the conversation is over), ``error`` (it
    failed; ``code`` says why) or ``unhandled`` (nobody understood the input).
    """

    kind: Literal["message", "end", "error", "unhandled"]
    text: str
    buttons: tuple[Button, ...] = ()
    markdown: bool = False
    code: str | None = None
    in_reply_to: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready map (what the web page receives)."""
        out: dict[str, Any] = {"kind": self.kind, "text": self.text}
        if self.buttons:
            out["buttons"] = [{"title": b.title, "payload": b.payload} for b in self.buttons]
        if self.markdown:
            out["markdown"] = True
        if self.code is not None:
            out["code"] = self.code
        return out


_ERRORS: dict[str, str] = {
    "busy": "I am still working on your earlier messages. Please wait a moment and send "
            "that again.",
    "invalid_message": "That message could not be read. Please try again.",
    "timeout": "Sorry, a part of this bot took too long to answer, so the conversation had "
               "to stop. Send a message to start again.",
    "unknown_service": "Sorry, a part of this bot is not available right now, so the "
                       "conversation had to stop. Please try again later.",
    "depth_exceeded": "Sorry, this conversation went too deep and had to stop. Send a "
                      "message to start again.",
    "invalid_reply": "Sorry, something went wrong on our side and the conversation had to "
                     "stop. Send a message to start again.",
}

END_TEXT = "This conversation has ended. Send a message to start a new one."
UNHANDLED_TEXT = "Sorry, I did not understand that."


def describe_error(error: wire.ErrorInfo | None) -> str:
    """An error notice in words a person understands (the code stays available to tools)."""
    code = error.code if error is not None else "error"
    known = _ERRORS.get(code)
    if known is not None:
        return known
    return (f"Sorry, something went wrong and the conversation had to stop ({code}). "
            "Send a message to start again.")


def render(notice: wire.Notice, caps: Capabilities = TEXT_ONLY) -> Activity:
    """A notice as an activity for a channel with ``caps``; what it cannot show becomes text.

    An output's payload is read with the quick-reply convention
    (:mod:`worker_sdk.quick_replies`); a map payload with ``"markdown": true`` marks its text
    as markdown.
    """
    if notice.type == "output":
        payload = notice.payload
        markdown = isinstance(payload, dict) and payload.get("markdown") is True
        output = read_output(payload)
        if caps.buttons:
            text, buttons = output.text, output.buttons
        else:
            text, buttons = plain_text(payload), ()
        return Activity("message", text, buttons, markdown and caps.markdown,
                        in_reply_to=notice.in_reply_to)
    if notice.type == "end":
        return Activity("end", END_TEXT, in_reply_to=notice.in_reply_to)
    if notice.type == "unhandled":
        return Activity("unhandled", UNHANDLED_TEXT, in_reply_to=notice.in_reply_to)
    error = notice.error or wire.ErrorInfo("error")
    return Activity("error", describe_error(error), code=error.code,
                    in_reply_to=notice.in_reply_to)


class OutputChannel:
    """Shows activities on one platform. Subclasses implement :meth:`send_text` and, where
    the platform can, :meth:`send_buttons` and :meth:`send_typing`; :meth:`show` picks."""

    name: str = "text"
    capabilities: Capabilities = TEXT_ONLY

    async def send_text(self, chat_id: str, text: str, *, markdown: bool = False) -> None:
        """Show a text."""
        raise NotImplementedError

    async def send_buttons(self, chat_id: str, text: str, buttons: tuple[Button, ...]) -> None:
        """Show a text with quick replies; by default, the titles appended to the text."""
        titles = " ".join(f"[{b.title}]" for b in buttons)
        await self.send_text(chat_id, f"{text} {titles}" if text else titles)

    async def send_typing(self, chat_id: str, on: bool) -> None:
        """Show or hide "typing..."; by default nothing."""

    async def show(self, chat_id: str, activity: Activity) -> None:
        """Show one activity with what this channel can do."""
        if activity.buttons:
            await self.send_buttons(chat_id, activity.text, activity.buttons)
        else:
            await self.send_text(chat_id, activity.text, markdown=activity.markdown)

    async def show_notice(self, chat_id: str, notice: wire.Notice) -> Activity:
        """Render and show one notice; return the activity shown."""
        activity = render(notice, self.capabilities)
        await self.show(chat_id, activity)
        return activity
