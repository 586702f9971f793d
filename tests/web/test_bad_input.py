"""Bad input from a socket: a clear error frame, never forwarded unchecked; per-socket limits."""

from __future__ import annotations

import asyncio
import json
import secrets

import aiohttp
import pytest

from tests.integration.procs import eventually

from .conftest import Tab, WebHarness

pytestmark = pytest.mark.infra


def errors(tab: Tab) -> list[dict[str, object]]:
    return [f for f in tab.frames if f["type"] == "error"]


async def refused(tab: Tab, frame: object, code: str) -> dict[str, object]:
    before = len(errors(tab))
    await tab.send(frame)  # type: ignore[arg-type]
    await eventually(lambda: len(errors(tab)) > before, 10, f"an error frame {code!r}")
    error = errors(tab)[before]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    return error


async def test_bad_frames_get_error_frames_and_reach_nobody(web: WebHarness) -> None:
    await web.gateway("--max-frame", "2000")
    tab = await Tab.open(web.url)
    session = "web:" + tab.session
    try:
        await refused(tab, "this is not json", "bad_frame")
        await refused(tab, "[1, 2]", "bad_frame")
        await refused(tab, {"type": "launch", "id": "x" * 10}, "bad_frame")
        await refused(tab, {"type": "message", "id": "no", "text": "hi"}, "bad_frame")
        await refused(tab, {"type": "message", "id": "a" * 10, "text": 5}, "bad_frame")
        await refused(tab, {"type": "message", "id": "a" * 10, "text": "  \x00 "}, "empty")
        deep: object = "x"
        for _ in range(12):
            deep = [deep]
        await refused(tab, {"type": "message", "id": "a" * 10, "text": "t", "payload": deep},
                      "bad_frame")
        big = await refused(tab, {"type": "message", "id": "b" * 10, "text": "x" * 3000},
                            "too_large")
        assert big["id"] == "b" * 10  # the page can mark that message as not sent
        assert "2000" in str(big["message"])
        await tab.ws.send_bytes(b"\x00\x01")
        await eventually(lambda: errors(tab)[-1]["message"] == "Frames must be JSON text.", 10)
        assert await web.record(session) is None  # nothing reached the router
        # The socket is still usable.
        await tab.say("hi", secrets.token_hex(8))
        await tab.wait_text("Welcome")
    finally:
        await tab.close()


async def test_overlong_typed_text_is_refused(web: WebHarness) -> None:
    await web.gateway()
    tab = await Tab.open(web.url)
    try:
        await refused(tab, {"type": "message", "id": "c" * 10, "text": "y" * 1001}, "too_large")
        assert await web.record("web:" + tab.session) is None
    finally:
        await tab.close()


async def test_a_huge_frame_closes_the_socket(web: WebHarness) -> None:
    await web.gateway()
    tab = await Tab.open(web.url)
    try:
        await tab.send(json.dumps({"type": "message", "id": "d" * 10, "text": "z" * 200_000}))
        await asyncio.wait_for(tab.closed.wait(), 10)
        assert tab.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        assert await web.record("web:" + tab.session) is None
    finally:
        await tab.close()


async def test_a_flood_is_rate_limited_then_cut_off(web: WebHarness) -> None:
    await web.gateway("--rate", "0.5", "--burst", "3")
    tab = await Tab.open(web.url)
    try:
        for i in range(200):
            if tab.closed.is_set():
                break
            await tab.say("hi", f"flood{i:04d}")
        await asyncio.wait_for(tab.closed.wait(), 15)
        assert tab.close_code == 4008
        assert {e["code"] for e in errors(tab)} == {"rate_limited"}
        assert len(errors(tab)) <= 5  # never more error frames than the page can use
        # Only what the limit let through was forwarded.
        again = await Tab.open(web.url, session=tab.session)
        try:
            await again.wait_text("Welcome")
            await asyncio.sleep(0.5)
            mine = [f for f in again.entries() if f["entry"]["from"] == "you"]
            assert 1 <= len(mine) <= 5, mine
        finally:
            await again.close()
    finally:
        await tab.close()


async def test_the_first_frame_must_be_hello(web: WebHarness) -> None:
    await web.gateway()
    tab = await Tab.open(web.url, hello=False)
    try:
        await tab.say("hi", "e" * 10)
        await asyncio.wait_for(tab.closed.wait(), 10)
        assert errors(tab)[0]["code"] == "bad_frame"
        assert tab.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    finally:
        await tab.close()


async def test_a_message_without_a_router_is_reported_not_sent(bare_web: WebHarness) -> None:
    await bare_web.gateway()  # no router has declared NS.ingress: nothing can take it
    tab = await Tab.open(bare_web.url)
    try:
        error = await refused(tab, {"type": "message", "id": "f" * 10, "text": "hi"},
                              "unavailable")
        assert error["id"] == "f" * 10
        assert "not sent" in str(error["message"])
    finally:
        await tab.close()
