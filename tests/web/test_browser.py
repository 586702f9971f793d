"""The web chat in a real browser: the system Chromium, driven by Playwright.

Chromium comes from the distribution (``apt-get install -y chromium``; scripts/test installs
it when missing), never from Playwright's own download. CLOUDBUNCH_CHROMIUM names another
binary.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.procs import eventually

from .conftest import WebHarness

pytestmark = pytest.mark.infra

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = os.environ.get("CLOUDBUNCH_CHROMIUM") or shutil.which("chromium") or \
        "/usr/bin/chromium"
    if not Path(path).exists():
        raise AssertionError(f"no Chromium at {path}: install it with `apt-get install -y "
                             "chromium` (scripts/test does) or set CLOUDBUNCH_CHROMIUM")
    return path


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A Chromium browser context with a fresh profile (one local storage for its tabs)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium_path(), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1000, "height": 760})
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            await context.close()


async def bot_texts(page: Any) -> list[str]:
    return [t.strip() for t in await page.locator("#log li.bot .bubble").all_inner_texts()]


async def wait_bot(page: Any, fragment: str) -> None:
    await page.locator("#log li.bot .bubble", has_text=fragment).last.wait_for()


async def type_message(page: Any, text: str) -> None:
    await page.get_by_label("Your message").fill(text)
    await page.get_by_label("Your message").press("Enter")


async def press(page: Any, title: str) -> None:
    """Click the newest quick reply named ``title``."""
    await page.locator("#log .buttons:not(.used)").get_by_role(
        "button", name=title, exact=True).last.click()


async def seqs(page: Any) -> list[int]:
    return [int(s) for s in await page.locator("#log li[data-seq]").evaluate_all(
        "els => els.map(e => e.dataset.seq)")]


async def start_order(page: Any) -> None:
    await page.get_by_role("button", name="Hi!").click()
    await wait_bot(page, "Welcome to Bunch Pizza")
    await press(page, "order")
    await wait_bot(page, "Which pizza")
    await press(page, "margherita")
    await wait_bot(page, "Which size")


async def finish_order(page: Any) -> None:
    await press(page, "large")
    await wait_bot(page, "Anything to drink")
    # With the keyboard alone: quick replies are buttons, reached and pressed like any other.
    cola = page.locator("#log .buttons:not(.used)").get_by_role("button", name="cola")
    await cola.focus()
    await page.keyboard.press("Enter")
    await wait_bot(page, "Where should we deliver")
    await type_message(page, "12 Baker Street")
    await wait_bot(page, "card number")
    await type_message(page, "4242 4242 4242 4242")
    await wait_bot(page, "Order #1 confirmed")


async def check_once(page: Any) -> None:
    """Every entry shown once, numbered 1..N without a hole."""
    numbers = await seqs(page)
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    texts = await bot_texts(page)
    for fragment in ("Welcome to Bunch Pizza", "Which pizza", "Which size",
                     "Anything to drink", "Where should we deliver"):
        assert sum(fragment in t for t in texts) <= 1, texts


async def test_order_a_pizza_in_the_browser(web: WebHarness, browser: Any,
                                            tmp_path: Path) -> None:
    await web.gateway("--debug", "--title", "Bunch Pizza")
    page = await browser.new_page()
    await page.goto(web.url)
    await page.get_by_text("Online").wait_for()
    await start_order(page)
    # The debug panel shows the live stack: the menu form above the root.
    await page.locator("#frames li.top .name", has_text="menu").wait_for()
    assert await page.locator("#frames .name").all_inner_texts() == ["menu", "pizza"]
    await finish_order(page)
    await page.locator("#frames li.top .name", has_text="pizza").wait_for()
    await page.locator("#typing:not(.on)").wait_for(state="attached")
    await check_once(page)
    mine = [t.strip() for t in await page.locator("#log li.you .bubble").all_inner_texts()]
    assert mine == ["hi", "order", "margherita", "large", "cola", "12 Baker Street",
                    "4242 4242 4242 4242"]
    shot = tmp_path / "pizza-order.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot of the finished order: {shot}")
    # Phone width: the same page, the stack panel below the chat.
    await page.set_viewport_size({"width": 390, "height": 844})
    phone = tmp_path / "pizza-order-phone.png"
    await page.screenshot(path=str(phone))
    print(f"screenshot at phone width: {phone}")
    box = await page.locator("#composer").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    # "New conversation" ends the session in words a person understands.
    await page.get_by_role("button", name="New conversation").click()
    await page.locator("#log li.notice.end", has_text="conversation has ended").wait_for()


async def test_reload_in_the_middle_shows_the_conversation_and_continues(
        web: WebHarness, browser: Any) -> None:
    await web.gateway()
    page = await browser.new_page()
    await page.goto(web.url)
    await start_order(page)
    before = await page.locator("#log li[data-seq]").all_inner_texts()
    await page.reload()
    await page.get_by_text("Online").wait_for()
    await eventually(lambda: _count(page, len(before)), 15, "the conversation shown again")
    assert await page.locator("#log li[data-seq]").all_inner_texts() == before
    await finish_order(page)
    await check_once(page)


async def _count(page: Any, n: int) -> bool:
    return bool(await page.locator("#log li[data-seq]").count() >= n)


async def test_a_killed_gateway_is_replaced_and_the_page_shows_every_notice_once(
        web: WebHarness, browser: Any) -> None:
    gateway = await web.gateway()
    page = await browser.new_page()
    await page.goto(web.url)
    await start_order(page)
    # Send, and kill the gateway at once: the answer is produced while no gateway runs, or
    # the message had not even been published (the page sends it again).
    await press(page, "large")
    gateway.kill()
    await page.get_by_text("Reconnecting").wait_for()
    await web.gateway()
    await page.get_by_text("Online").wait_for()
    await wait_bot(page, "Anything to drink")
    await press(page, "cola")
    await wait_bot(page, "Where should we deliver")
    await check_once(page)
    texts = await bot_texts(page)
    assert sum("Anything to drink" in t for t in texts) == 1
    mine = [t.strip() for t in await page.locator("#log li.you .bubble").all_inner_texts()]
    assert mine == ["hi", "order", "margherita", "large", "cola"]


async def test_two_tabs_on_one_session(web: WebHarness, browser: Any) -> None:
    await web.gateway()
    first = await browser.new_page()
    await first.goto(web.url)
    await start_order(first)
    second = await browser.new_page()  # same browser profile: same session
    await second.goto(web.url)
    await wait_bot(second, "Which size")
    await first.get_by_text("opened in another tab").wait_for()
    await press(second, "small")
    await wait_bot(second, "Anything to drink")
    # The first tab takes the conversation back and sees what happened in the other.
    await first.get_by_role("button", name="Continue here").click()
    await wait_bot(first, "Anything to drink")
    await second.get_by_text("opened in another tab").wait_for()
    await check_once(first)
    assert re.search(r"small margherita", " ".join(await bot_texts(first)))
