"""The pizza flow's idle timers, in virtual time: a reminder after a minute of silence while a
question waits, and the order dropped after 15 minutes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from router import demo_flow as pizza
from router.testing import FlowTest


def texts(shown: list[Any]) -> list[str]:
    """What the person reads (a question with quick replies shows its text)."""
    return [o["text"] if isinstance(o, dict) else o for o in shown]


async def test_a_waiting_question_reminds_once_then_the_root_drops_the_order() -> None:
    async with FlowTest(pizza.SERVICES, root=pizza.ROOT) as flow:
        await flow.say("hi")
        assert await flow.advance(3600) == [], "no order open: nothing to remind of"
        assert texts(await flow.say("order"))[0].startswith("Which pizza would you like?")
        assert await flow.advance(59) == []
        reminder = await flow.advance(1)
        assert len(reminder) == 1 and texts(reminder)[0].startswith(
            "Are you still there? Which pizza would you like?")
        assert reminder[0]["buttons"] == list(pizza.PIZZAS), "the quick replies come again"
        assert await flow.stack() == ["pizza", "menu"]
        assert await flow.advance(900 - 60 - 1) == []
        assert await flow.advance(1) == [
            "You have been away for 900 seconds, so I dropped the order in progress. "
            "Say 'order' to start again."]
        assert await flow.stack() == ["pizza"]
        assert await flow.advance(3600) == []


async def test_each_message_restarts_the_silence() -> None:
    async with FlowTest(pizza.SERVICES, root=pizza.ROOT) as flow:
        await flow.say("hi")
        await flow.say("order")
        await flow.advance(600)  # the reminder fires meanwhile
        assert texts(await flow.say("veggie")) == [
            "A veggie. Which size: small, medium or large?"]
        assert texts(await flow.advance(60)) == [
            "Are you still there? A veggie. Which size: small, medium or large?"]
        assert await flow.advance(839) == [], "15 minutes count from the last message"
        assert (await flow.advance(1))[0].startswith("You have been away")


async def test_a_digression_keeps_the_order_timer() -> None:
    async with FlowTest(pizza.SERVICES, root=pizza.ROOT) as flow:
        await flow.say("hi")
        await flow.say("order")
        await flow.say("help")  # menu passes it; the root answers and sets its timer again
        assert await flow.stack() == ["pizza", "menu"]
        assert await flow.advance(899) == []
        assert (await flow.advance(1))[0].startswith("You have been away")


async def test_the_demo_can_shorten_both() -> None:
    saved = (pizza.IDLE.remind_after, pizza.IDLE.give_up_after)
    pizza.IDLE.remind_after, pizza.IDLE.give_up_after = 2, 5
    try:
        async with FlowTest(pizza.SERVICES, root=pizza.ROOT) as flow:
            await flow.say("hi")
            await flow.say("order")
            assert len(await flow.advance(2)) == 1
            assert (await flow.advance(3))[0].startswith("You have been away for 5 seconds")
    finally:
        pizza.IDLE.remind_after, pizza.IDLE.give_up_after = saved


def test_the_demo_shows_the_reminders_of_a_silence(tmp_path: Path) -> None:
    script = tmp_path / "script.txt"
    script.write_text("hi\norder\n/wait 2.5\nhi\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "router.cli", "demo", "--embedded", "--script", str(script),
         "--remind-after", "0.5", "--give-up-after", "1.5"],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("bot> ")]
    assert lines[2].startswith("bot> Are you still there? Which pizza"), done.stdout
    assert lines[3].startswith("bot> You have been away for 1.5 seconds"), done.stdout
    assert lines[4] == "bot> Say 'order' to order a pizza, or 'help'.", done.stdout
