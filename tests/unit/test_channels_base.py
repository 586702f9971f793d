"""The channel adapter shape: sessions, updates, rendering by capability, quick replies."""

from __future__ import annotations

from typing import Any

import pytest

from router.channels.base import (
    TEXT_ONLY,
    Capabilities,
    OutputChannel,
    Update,
    describe_error,
    forward,
    render,
    session_id,
    split_session,
)
from worker_sdk import wire
from worker_sdk.client import Client
from worker_sdk.memory import MemoryBroker
from worker_sdk.quick_replies import Button, plain_text, quick_replies, read_output

WEB = Capabilities(buttons=True, typing=True)


def notice(kind: str, payload: Any = None, error: wire.ErrorInfo | None = None) -> wire.Notice:
    return wire.Notice("web:1", "n1", "m1", kind, payload, error)


def test_session_id_is_channel_colon_chat() -> None:
    assert session_id("tg", 42) == "tg:42"
    assert split_session("web:a:b") == ("web", "a:b")


@pytest.mark.parametrize("channel", ["", "Web", "a b", "x:y", "a" * 33])
def test_session_id_refuses_bad_channel_names(channel: str) -> None:
    with pytest.raises(ValueError, match="channel name"):
        session_id(channel, 1)


def test_session_id_refuses_overlong_sessions_and_empty_chats() -> None:
    with pytest.raises(ValueError, match="longer than 256"):
        session_id("web", "x" * 300)
    with pytest.raises(ValueError, match="empty"):
        session_id("web", "")
    with pytest.raises(ValueError, match="not a channel session"):
        split_session("nocolon")


def test_update_meta_carries_channel_user_locale_and_extra_never_overrides() -> None:
    update = Update("tg", "42", "777", "hi", user="u1", locale="fr",
                    extra={"channel": "forged", "chat_type": "private"})
    assert update.session == "tg:42"
    assert update.meta() == {"channel": "tg", "user": "u1", "locale": "fr",
                             "chat_type": "private"}
    assert Update("web", "1", "m").meta() == {"channel": "web"}


async def test_forward_sends_the_platform_message_id_as_the_dedup_id() -> None:
    broker = MemoryBroker()
    await broker.connect()
    await broker.declare("cb.ingress")
    await broker.bind("cb.x.ingress", "ingress", "cb.ingress")  # as the router does
    client = Client(broker, "cb", "cb.web.test")
    await forward(client, Update("web", "7", "platform-1", "hello", user="ann"), seq=5)
    await forward(client, Update("web", "7", "platform-2", kind="end"))
    first, second = (wire.ClientMessage.from_wire(wire.decode(b))
                     for b in broker.messages("cb.ingress"))
    assert (first.session, first.id, first.payload, first.seq) == ("web:7", "platform-1",
                                                                   "hello", 5)
    assert first.meta == {"channel": "web", "user": "ann"}
    assert (second.type, second.id, second.session) == ("end", "platform-2", "web:7")


def test_quick_replies_round_trip() -> None:
    payload = quick_replies("Size?", "small", ("Large one", "large"), Button("Tiny", {"s": 1}))
    assert payload == {"text": "Size?", "buttons": [
        "small", {"title": "Large one", "payload": "large"},
        {"title": "Tiny", "payload": {"s": 1}}]}
    out = read_output(payload)
    assert out.text == "Size?"
    assert out.buttons == (Button("small", "small"), Button("Large one", "large"),
                           Button("Tiny", {"s": 1}))
    assert plain_text(payload) == "Size? [small] [Large one] [Tiny]"


def test_quick_replies_refuses_bad_buttons() -> None:
    with pytest.raises(TypeError, match="a button is"):
        quick_replies("x", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a string"):
        quick_replies(None)  # type: ignore[arg-type]


def test_read_output_tolerates_other_payloads_and_drops_malformed_buttons() -> None:
    assert read_output("hi").text == "hi"
    assert read_output(None).text == ""
    assert read_output({"a": 1}).text == "{'a': 1}"
    assert read_output({"text": "t", "buttons": "nope"}).buttons == ()
    assert read_output({"text": "t", "buttons": ["", 3, {"title": 4}, "ok"]}).buttons == (
        Button("ok", "ok"),)
    assert plain_text("plain") == "plain"


def test_render_keeps_buttons_only_where_the_channel_has_them() -> None:
    payload = quick_replies("Size?", "small", "large")
    rich = render(notice("output", payload), WEB)
    assert (rich.kind, rich.text, [b.title for b in rich.buttons]) == (
        "message", "Size?", ["small", "large"])
    assert rich.in_reply_to == "m1"
    plain = render(notice("output", payload), TEXT_ONLY)
    assert (plain.text, plain.buttons) == ("Size? [small] [large]", ())


def test_render_markdown_only_where_the_channel_has_it() -> None:
    payload = {"text": "*bold*", "markdown": True}
    assert render(notice("output", payload), Capabilities(markdown=True)).markdown
    shown = render(notice("output", payload), TEXT_ONLY)
    assert (shown.text, shown.markdown) == ("*bold*", False)


def test_end_error_and_unhandled_are_sentences() -> None:
    assert "ended" in render(notice("end")).text
    assert "did not understand" in render(notice("unhandled", "xyz")).text
    err = render(notice("error", error=wire.ErrorInfo("timeout", "turn t1 timed out")))
    assert (err.kind, err.code) == ("error", "timeout")
    assert "took too long" in err.text and "t1" not in err.text
    assert "wait a moment" in describe_error(wire.ErrorInfo("busy"))
    assert "(weird_code)" in describe_error(wire.ErrorInfo("weird_code"))
    assert render(notice("error")).code == "error"


class Recorder(OutputChannel):
    def __init__(self, caps: Capabilities) -> None:
        self.capabilities = caps
        self.sent: list[tuple[str, str]] = []

    async def send_text(self, chat_id: str, text: str, *, markdown: bool = False) -> None:
        self.sent.append((chat_id, text))


async def test_output_channel_defaults_degrade_buttons_to_text() -> None:
    channel = Recorder(WEB)  # claims buttons, but only implements send_text
    await channel.show_notice("1", notice("output", quick_replies("Size?", "s", "m")))
    await channel.show_notice("1", notice("output", "plain"))
    await channel.send_typing("1", True)
    assert channel.sent == [("1", "Size? [s] [m]"), ("1", "plain")]
    assert render(notice("output", "x"), WEB).to_json() == {"kind": "message", "text": "x"}
    assert render(notice("output", quick_replies("q", "a")), WEB).to_json() == {
        "kind": "message", "text": "q", "buttons": [{"title": "a", "payload": "a"}]}


async def test_output_channel_send_text_must_be_implemented() -> None:
    with pytest.raises(NotImplementedError):
        await OutputChannel().show("1", render(notice("output", "x")))


def test_gateway_queues_are_the_gateways_notice_queues() -> None:
    """``cloudbunch purge`` finds the gateways' queues by these names."""
    from router.channels.base import gateway_queues
    from router.channels.telegram.gateway import notice_queue as telegram_queue
    from router.channels.web.gateway import notice_queue as web_queue

    assert sorted(gateway_queues("ns")) == sorted([web_queue("ns"), telegram_queue("ns")])
