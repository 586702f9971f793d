"""The web gateway over raw WebSockets: conversation, numbering, resume, replicas, takeover."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from tests.integration.procs import eventually

from .conftest import Tab, WebHarness, free_port

pytestmark = pytest.mark.infra


def mid() -> str:
    return secrets.token_hex(8)


def seqs(tab: Tab) -> list[int]:
    return [f["seq"] for f in tab.entries()]


async def order_until_size(tab: Tab) -> None:
    await tab.say("hi", mid())
    await tab.wait_text("Welcome")
    await tab.say("order", mid(), payload="order")
    await tab.wait_text("Which pizza")
    await tab.say("margherita", mid())
    await tab.wait_text("Which size")


async def test_a_whole_order_over_one_socket_numbers_every_entry(web: WebHarness) -> None:
    await web.gateway()
    tab = await Tab.open(web.url)
    try:
        await order_until_size(tab)
        welcome = next(f["entry"] for f in tab.entries() if "Welcome" in f["entry"]["text"])
        assert [b["title"] for b in welcome["buttons"]] == ["order", "help"]
        for text, answer in (("large", "Anything to drink"), ("cola", "Where should we"),
                             ("12 Baker Street", "card number"),
                             ("4242 4242 4242 4242", "Order #1 confirmed")):
            await tab.say(text, mid())
            await tab.wait_text(answer)
        await tab.say("bye", mid())
        await tab.wait(lambda f: f["type"] == "entry" and f["entry"]["kind"] == "end")
        numbers = seqs(tab)
        assert numbers == list(range(1, len(numbers) + 1))
        mine = [f["entry"]["text"] for f in tab.entries() if f["entry"]["from"] == "you"]
        assert mine == ["hi", "order", "margherita", "large", "cola", "12 Baker Street",
                        "4242 4242 4242 4242", "bye"]
        # The person's message comes before the answers it caused.
        texts = [f["entry"]["text"] for f in tab.entries()]
        assert texts.index("cola") < texts.index(next(t for t in texts if "Checkout" in t))
        typing = [f["on"] for f in tab.frames if f["type"] == "typing"]
        assert True in typing  # shown while a message was handled
        await tab.wait(lambda f: f["type"] == "typing" and f["on"] is False)
        await eventually(lambda: [f["on"] for f in tab.frames if f["type"] == "typing"][-1]
                         is False, 10, "typing off at the end")
    finally:
        await tab.close()


async def test_a_reconnect_gets_exactly_the_entries_after_the_last_shown(
        web: WebHarness) -> None:
    await web.gateway()
    first = await Tab.open(web.url)
    await order_until_size(first)
    await first.close()
    everything = first.entries()
    again = await Tab.open(web.url, session=first.session, last=3)
    try:
        await eventually(lambda: len(again.entries()) == len(everything) - 3, 10.0,
                         "the missing entries")
        assert again.entries() == everything[3:]
        await again.say("large", mid())
        await again.wait_text("Anything to drink")
        assert seqs(again) == list(range(4, len(everything) + 3))
    finally:
        await again.close()
    reload = await Tab.open(web.url, session=first.session, last=0)
    try:
        await eventually(lambda: len(reload.entries()) == len(everything) + 2, 10.0,
                         "the whole conversation")
    finally:
        await reload.close()


async def test_a_second_socket_for_the_session_closes_the_first(web: WebHarness) -> None:
    await web.gateway()
    first = await Tab.open(web.url)
    second = await Tab.open(web.url, session=first.session)
    try:
        await asyncio.wait_for(first.closed.wait(), 10)
        assert first.close_code == 4001
        await second.say("hi", mid())
        await second.wait_text("Welcome")
    finally:
        await first.close()
        await second.close()


async def test_replicas_share_sessions_and_a_killed_one_loses_nothing(web: WebHarness) -> None:
    a_port = web.port
    a = await web.gateway()
    web.port = free_port()
    await web.gateway()
    b_url = web.url
    a_url = f"http://127.0.0.1:{a_port}/"
    tab = await Tab.open(a_url)
    other = await Tab.open(b_url)  # a second conversation, on the other replica
    try:
        await order_until_size(tab)
        await other.say("hi", mid())
        await other.wait_text("Welcome")
        a.kill()  # SIGKILL: no goodbye; its unacknowledged notices go to the other replica
        await asyncio.wait_for(tab.closed.wait(), 10)
        shown = tab.entries()
        resumed = await Tab.open(b_url, session=tab.session, last=shown[-1]["seq"])
        try:
            await resumed.say("large", mid())
            await resumed.wait_text("Anything to drink")
            await resumed.say("cola", mid())
            await resumed.wait_text("Where should we deliver")
            combined = shown + resumed.entries()
            assert [f["seq"] for f in combined] == list(range(1, len(combined) + 1))
            # No text of this conversation repeats: every entry was shown exactly once.
            texts = [f["entry"]["text"] for f in combined]
            assert len(texts) == len(set(texts)), texts
        finally:
            await resumed.close()
    finally:
        await tab.close()
        await other.close()


async def test_a_notice_delivered_twice_is_shown_once(web: WebHarness) -> None:
    from worker_sdk import wire

    await web.gateway()
    tab = await Tab.open(web.url)
    try:
        notice = wire.Notice("web:" + tab.session, "dup-notice-1", "m1", "output", "once", None)
        body = wire.encode(notice.to_wire())
        await web.publish(f"{web.ns}.web.notices", body, notice.id)
        await web.publish(f"{web.ns}.web.notices", body, notice.id)
        after = wire.Notice("web:" + tab.session, "dup-notice-2", "m1", "output", "after", None)
        await web.publish(f"{web.ns}.web.notices", wire.encode(after.to_wire()), after.id)
        await tab.wait_text("after")
        assert tab.bot_texts() == ["once", "after"]
        assert seqs(tab) == [1, 2]
        await tab.send("not json")
        await tab.wait(lambda f: f["type"] == "error")
        async with tab.http.get(web.url + "metrics") as response:
            text = await response.text()
        assert "cloudbunch_web_notices_relayed_total 2.0" in text
        assert "cloudbunch_web_notices_duplicate_total 1.0" in text
        assert 'cloudbunch_web_frames_refused_total{code="bad_frame"} 1.0' in text
        assert "cloudbunch_web_sockets 1.0" in text
    finally:
        await tab.close()


async def test_a_socket_on_another_replica_takes_the_session_over(web: WebHarness) -> None:
    await web.gateway()
    a_url = web.url
    web.port = free_port()
    await web.gateway()
    first = await Tab.open(a_url)
    second = await Tab.open(web.url, session=first.session)
    try:
        await asyncio.wait_for(first.closed.wait(), 15)
        assert first.close_code == 4001
        await second.say("hi", mid())
        await second.wait_text("Welcome")
    finally:
        await first.close()
        await second.close()
