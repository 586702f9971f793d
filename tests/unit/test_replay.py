"""History entries, export files and replay of recorded sessions against new code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest

from router import history
from router.replay import ReplayError, record, replay_export, replay_files
from worker_sdk import Context, Service, wire


def flow(greeting: str = "Nice to meet you, {}!", tries_key: str = "tries") -> list[Service]:
    greeter, ask_name = Service("greeter"), Service("ask_name")

    @greeter.on_start
    def greet(ctx: Context) -> None:
        ctx.open("ask_name", {"prompt": "Your name?"}, state={"visits": 1})

    @greeter.on_result("ask_name")
    def named(ctx: Context) -> None:
        result = ctx.result
        assert result is not None
        if not result.ok:
            ctx.fail("no_name")
            return
        ctx.reply(greeting.format(result.value), state=ctx.state | {"name": result.value})

    @greeter.on_message
    def chat(ctx: Context) -> None:
        if ctx.payload == "bye":
            ctx.close(ctx.state["name"])
        else:
            ctx.reply(f"You said {ctx.payload}")

    @ask_name.on_start
    def ask(ctx: Context) -> None:
        ctx.reply(ctx.args["prompt"], state={tries_key: 0})

    @ask_name.on_message
    def answer(ctx: Context) -> None:
        name = str(ctx.payload)
        if not name.isalpha():
            ctx.reply("Letters only, please.", state={tries_key: ctx.state[tries_key] + 1})
        else:
            ctx.close(name.capitalize())

    return [greeter, ask_name]


def messages(*texts: str) -> list[tuple[int, wire.ClientMessage]]:
    return [(1_000_000 + 1000 * i, wire.ClientMessage(
        type="end" if text == "<end>" else "message", session="web:1", id=f"m{i}",
        reply_to="cb.client.x", payload=None if text == "<end>" else text))
        for i, text in enumerate(texts)]


CONVERSATION = ("hi", "4da", "ada", "how are you", "bye")


async def recorded() -> dict[str, Any]:
    return await record("web:1", messages(*CONVERSATION), flow(), root="greeter")


async def test_the_recording_holds_every_client_message_and_turn() -> None:
    doc = await recorded()
    kinds = [e["kind"] for e in doc["entries"]]
    assert kinds.count("client") == 5
    turns = [e for e in doc["entries"] if e["kind"] == "turn"]
    assert [(t["service"], t["event"], t["reply"]["action"]) for t in turns] == [
        ("greeter", "start", "open"), ("ask_name", "start", "reply"),
        ("ask_name", "message", "reply"), ("ask_name", "message", "close"),
        ("greeter", "result", "reply"), ("greeter", "message", "reply"),
        ("greeter", "message", "close")]
    assert turns[1]["stack"] == ["greeter", "ask_name"]
    assert turns[-1]["stack"] == []
    lines = history.transcript(doc["entries"])
    assert any("ask_name <- message \"4da\" -> reply" in line for line in lines)
    assert any("> \"Nice to meet you, Ada!\"" in line for line in lines)


async def test_replay_against_unchanged_code_reports_nothing() -> None:
    report = await replay_export(await recorded(), flow())
    assert report.ok, report.differences
    assert report.sessions == 1 and report.turns == 7


async def test_replay_against_changed_code_reports_exactly_the_changed_turn() -> None:
    report = await replay_export(await recorded(), flow(greeting="Welcome, {}!"))
    assert [d.turn for d in report.differences] == [5]
    (diff,) = report.differences
    assert set(diff.fields) == {"output"}
    assert diff.fields["output"] == (["Nice to meet you, Ada!"], ["Welcome, Ada!"])
    assert "greeter <- result" in "\n".join(diff.lines())


async def test_state_only_differences_can_be_accepted() -> None:
    changed = flow(tries_key="attempts")
    strict = await replay_export(await recorded(), changed)
    assert {name for d in strict.differences for name in d.fields} == {"state"}
    assert [d.turn for d in strict.differences] == [2, 3]
    lenient = await replay_export(await recorded(), changed, ignore_state=True)
    assert lenient.ok


async def test_a_missing_service_shows_as_a_difference_not_a_crash() -> None:
    report = await replay_export(await recorded(), flow()[:1])
    assert not report.ok
    first = report.differences[0]
    assert first.turn == 2


async def test_export_files_round_trip_bytes_and_timestamps(tmp_path: Path) -> None:
    doc = await recorded()
    doc["entries"][0]["message"]["payload"] = {"raw": b"\x00\xff",
                                               "at": msgpack.Timestamp(5, 6)}
    path = tmp_path / "s.json"
    path.write_text(history.to_json(doc), encoding="utf-8")
    back = history.from_json(path.read_text(encoding="utf-8"))
    assert back["entries"][0]["message"]["payload"] == {"raw": b"\x00\xff",
                                                        "at": msgpack.Timestamp(5, 6)}
    report = await replay_files([str(path)], flow())
    assert report.turns == 7


@pytest.mark.parametrize("text, expected", [
    ("not json", "not a CloudBunch session export"),
    (json.dumps({"format": "other"}), "write one with `cloudbunch session export ID`"),
    (json.dumps({"format": "cloudbunch-session", "version": 99}), "version 99"),
])
def test_a_file_that_is_not_an_export_says_so(text: str, expected: str) -> None:
    with pytest.raises(history.BadExport, match=expected.replace("(", r"\(").replace(
            ")", r"\)")):
        history.from_json(text, where="f.json")


async def test_a_recording_without_a_root_needs_one() -> None:
    doc = history.export("s", "cb", [])
    with pytest.raises(ReplayError, match="--root"):
        await replay_export(doc, flow())


async def test_a_truncated_history_cannot_be_replayed_and_says_why() -> None:
    doc = await recorded()
    doc["entries"] = doc["entries"][4:]
    with pytest.raises(ReplayError, match="raise --history"):
        await replay_export(doc, flow())


async def test_the_replay_command_prints_differences_and_exits_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from router.replay import run

    path = tmp_path / "s.json"
    path.write_text(history.to_json(await recorded()), encoding="utf-8")
    assert await run([str(path)], flow()) == 0
    assert "no differences" in capsys.readouterr().out
    assert await run([str(path)], flow(greeting="Hi {}")) == 1
    out = capsys.readouterr().out
    assert "web:1 turn 5 (greeter <- result):" in out
    assert "1 turn(s) differ" in out
