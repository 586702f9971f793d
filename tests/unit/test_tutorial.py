"""The README's tutorial flow, tested with the in-memory test kit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from examples.tutorial import answer, ask_name, greeter
from router.testing import FlowTest, HandlerError
from worker_sdk import Context, Service


async def test_greeter_asks_name_then_chats() -> None:
    async with FlowTest([greeter, ask_name], root="greeter") as flow:
        assert await flow.say("hi") == ["Hello! What is your name?"]
        assert await flow.stack() == ["greeter", "ask_name"]
        assert await flow.say("R2D2") == ["Just letters, please. What is your name?"]
        assert await flow.say("ada") == ["Nice to meet you, Ada!"]
        assert await flow.stack() == ["greeter"]
        assert await flow.states() == [{"visits": 1, "name": "Ada"}]
        assert await flow.say("bye") == ["<end>"]
        assert await flow.stack() == []


async def test_help_is_a_digression_and_the_question_stays_open() -> None:
    async with FlowTest([greeter, ask_name], root="greeter") as flow:
        await flow.say("hi")
        assert await flow.say("help") == ["I ask your name so that I can greet you properly."]
        assert await flow.stack() == ["greeter", "ask_name"]
        assert await flow.say("ada") == ["Nice to meet you, Ada!"]


async def test_handler_exceptions_fail_the_test_by_default() -> None:
    broken = Service("greeter")

    @broken.on_start
    def start(ctx: Context) -> None:
        raise KeyError("oops")

    async with FlowTest([broken], root="greeter") as flow:
        with pytest.raises(HandlerError, match="handler"):
            await flow.say("hi")
    async with FlowTest([broken], root="greeter", raise_errors=False) as flow:
        assert await flow.say("hi") == ["<error exception: KeyError: 'oops'>"]


async def test_handler_errors_show_their_cause() -> None:
    broken = Service("greeter")

    @broken.on_start
    def start(ctx: Context) -> None:
        raise ValueError("kaboom in handler")

    async with FlowTest([broken], root="greeter") as flow:
        with pytest.raises(HandlerError, match="raised ValueError: kaboom in handler"):
            await flow.say("hi")
    # The notice reads as a real client gets it: the code, then the exception.
    async with FlowTest([broken], root="greeter", raise_errors=False) as flow:
        assert await flow.say("hi") == ["<error exception: ValueError: kaboom in handler>"]


async def test_a_missing_child_fails_visibly_instead_of_greeting_none() -> None:
    # on_result("ask_name") also receives the child's failure; the tutorial hands it up.
    async with FlowTest([greeter], root="greeter") as flow:
        shown = await flow.say("hi")
        assert shown == ["<error unknown_service: no queue 'flowtest.service.ask_name': "
                         "no worker of service 'ask_name' has started>"]
        assert "None" not in str(shown)


async def test_propagate_hands_a_child_failure_up_and_is_refused_elsewhere() -> None:
    parent, child = Service("parent"), Service("child")
    parent.on_start(lambda ctx: ctx.open("child"))

    @parent.on_result("child")
    def done(ctx: Context) -> None:
        ctx.propagate()

    child.on_start(lambda ctx: ctx.fail("nope", "the child gave up"))
    async with FlowTest([parent, child], root="parent") as flow:
        assert await flow.say("go") == ["<error nope: the child gave up>"]

    wrong = Service("parent")
    wrong.on_start(lambda ctx: ctx.propagate())
    async with FlowTest([wrong], root="parent") as flow:
        with pytest.raises(HandlerError, match=r"ActionError: propagate\(\) is only allowed"):
            await flow.say("go")


async def test_the_question_reminds_once_after_a_minute_of_silence() -> None:
    async with FlowTest([greeter, ask_name], root="greeter") as flow:
        await flow.say("hi")
        assert await flow.advance(59.999) == []
        assert await flow.advance(0.001) == ["Still there? What is your name?"]
        assert await flow.advance(3600) == [], "one reminder only"
        assert await flow.say("ada") == ["Nice to meet you, Ada!"]


async def test_a_recorded_conversation_replays_against_the_same_and_changed_code() -> None:
    async with FlowTest([greeter, ask_name], root="greeter") as flow:
        for text in ("hi", "R2D2", "ada", "bye"):
            await flow.say(text)
        recording = await flow.export()
        assert (await flow.replay(recording)).ok
    polite = Service("ask_name")

    @polite.on_start
    def ask(ctx: Context) -> None:
        ctx.reply("Hello! May I have your name?", state={"tries": 0})

    polite.on_message(answer)
    async with FlowTest([greeter, polite], root="greeter") as changed:
        report = await changed.replay(recording)
    assert [(d.turn, sorted(d.fields)) for d in report.differences] == [(2, ["output"])]


async def test_the_readme_block_runs_as_written() -> None:
    """The README's "Test it without any infrastructure" block, taken from the README and
    run: a README edit that breaks it fails here."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Test it without any infrastructure", 1)[1]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    names: dict[str, Any] = {}
    exec(compile(block, "README.md", "exec"), names)
    await names["test_greeter"]()
