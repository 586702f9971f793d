"""The demo's pizza flow (router.demo_flow): what a newcomer tries first, in memory."""

from __future__ import annotations

from router.demo_flow import HELP, SERVICES, WELCOME, address, checkout, menu, order, pizza
from router.testing import FlowTest
from worker_sdk.quick_replies import plain_text


async def test_a_first_help_is_answered_not_swallowed_by_the_welcome() -> None:
    async with FlowTest(SERVICES, root="pizza") as flow:
        assert await flow.say("help") == [WELCOME, HELP]
        assert await flow.stack() == ["pizza"]


async def test_a_first_order_starts_the_order() -> None:
    async with FlowTest(SERVICES, root="pizza") as flow:
        shown = await flow.say("order")
        assert shown[0] == WELCOME
        assert plain_text(shown[1]).startswith("Which pizza would you like?")
        assert await flow.stack() == ["pizza", "menu"]


async def test_a_greeting_gets_only_the_welcome() -> None:
    async with FlowTest(SERVICES, root="pizza") as flow:
        assert await flow.say("hi") == [WELCOME]
        assert await flow.states() == [{"placed": 0}]


async def test_a_child_that_is_not_served_is_reported_by_the_root() -> None:
    # payment is missing: its failure travels up through checkout and menu to the root.
    async with FlowTest([pizza, menu, order, checkout, address], root="pizza") as flow:
        for line in ("hi", "order", "margherita", "large", "cola"):
            await flow.say(line)
        shown = await flow.say("12 Baker Street")
        assert shown[-1] == ("Sorry, the order could not be completed (unknown_service). "
                             "Say 'order' to try again.")
        assert await flow.stack() == ["pizza"]
