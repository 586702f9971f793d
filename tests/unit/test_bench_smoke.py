"""The bench's pure parts: statistics, the table, the load generator, profile parsing."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import pytest

from bench.load import closed_loop, interleaved, run_all
from bench.profile import area_of, parse_raw
from bench.run import build_parser, make_plan, message_sizes
from bench.stats import Figure, Summary, Target, format_markdown, format_table, percentile, ratios


def test_percentile_interpolates_and_handles_empty() -> None:
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.99) == pytest.approx(9.9)
    assert math.isnan(percentile([], 0.5))


def test_summary_median_and_range() -> None:
    s = Summary.of([3.0, 1.0, 2.0])
    assert (s.median, s.low, s.high) == (2.0, 1.0, 3.0)
    assert s.to_json() == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": [3.0, 1.0, 2.0]}
    assert Summary.of([]).to_json()["median"] is None


def test_targets_and_ratios() -> None:
    assert Target(">=", 0.5).met(0.6) is True
    assert Target("<=", 2.5).met(3.0) is False
    assert Target("<=", 2.5).met(math.nan) is None
    assert ratios([2.0, 3.0], [4.0, 0.0])[0] == 0.5
    assert math.isnan(ratios([1.0], [0.0])[0])


def test_tables_show_median_range_and_verdict() -> None:
    figures = [Figure("a", "routed / direct throughput", "ratio", Summary.of([0.4, 0.5, 0.6]),
                      Target(">=", 0.5)),
               Figure("b", "router CPU per turn", "ms", Summary.of([1.2]), Target("<=", 0.8)),
               Figure("c", "direct round trips/s", "1/s", Summary.of([1234.5]))]
    text = format_table(figures)
    assert "0.500" in text and "0.400 - 0.600" in text and "met" in text
    assert "NOT MET" in text
    assert "1,234" in text or "1,235" in text
    assert format_markdown(figures).count("\n") == 4


async def test_closed_loop_counts_and_never_overlaps_a_key() -> None:
    busy: set[str] = set()

    async def request(key: str) -> None:
        assert key not in busy
        busy.add(key)
        await asyncio.sleep(0.005)
        busy.discard(key)

    marks: list[bool] = []
    result = await closed_loop(request, [f"k{i}" for i in range(20)], in_flight=10,
                               warmup=0.05, duration=0.3, on_window=marks.append)
    assert marks == [True, False]
    assert result.completed > 100 and result.rate > 300
    assert 4.0 < result.p50_ms < 50.0
    assert not busy
    assert await run_all(request, ["x", "y"], concurrency=2, timeout=5) < 1.0


async def test_closed_loop_reports_a_failing_request() -> None:
    async def request(key: str) -> None:
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken"):
        await closed_loop(request, ["a"], in_flight=1, warmup=0.05, duration=0.1)


async def test_interleaved_paths_take_turns_one_at_a_time() -> None:
    running: list[str] = []
    calls: list[str] = []

    def path(name: str, seconds: float) -> Callable[[str], Awaitable[None]]:
        async def request(key: str) -> None:
            assert not running, f"{name} began while {running} ran"
            running.append(name)
            calls.append(name)
            await asyncio.sleep(seconds)
            running.remove(name)
        return request

    marks: list[bool] = []
    got = await interleaved({"a": path("a", 0.002), "b": path("b", 0.006)}, ["k1", "k2"],
                            warmup=0.02, duration=0.3, on_window=marks.append)
    assert marks == [True, False]
    assert abs(got["a"].completed - got["b"].completed) <= 1 and got["a"].completed > 10
    assert 1.5 < got["b"].p50_ms / got["a"].p50_ms < 6
    # The order rotates: each path goes first in every other round.
    firsts = calls[0::2]
    assert firsts.count("a") - firsts.count("b") in (-1, 0, 1)


async def test_interleaved_paths_see_the_same_slow_moments() -> None:
    """The machine slows everything down 5 times for the first half of the window: taken
    in turn, both paths see it alike and their p50 ratio stays that of their own costs."""
    loop = asyncio.get_running_loop()
    start = loop.time()

    def path(seconds: float) -> Callable[[str], Awaitable[None]]:
        async def request(key: str) -> None:
            slow = 5 if loop.time() - start < 0.2 else 1
            await asyncio.sleep(seconds * slow)
        return request

    got = await interleaved({"a": path(0.002), "b": path(0.004)}, ["k"], warmup=0.0,
                            duration=0.4)
    assert 1.3 < got["b"].p50_ms / got["a"].p50_ms < 3.0


async def test_interleaved_needs_a_path_and_a_key() -> None:
    with pytest.raises(ValueError, match="at least one path and one key"):
        await interleaved({}, ["k"], warmup=0, duration=0.1)


def test_parse_raw_profile() -> None:
    raw = ("process 1:\"python\";<module> (router/cli.py:5);step (router/core.py:10) 30\n"
           "<module> (router/cli.py:5);write (asyncio/streams.py:3) 70\n"
           "garbage\n")
    prof = parse_raw(raw)
    assert prof.samples == 100
    assert prof.top(prof.self_, 1) == [("write (asyncio/streams.py)", 70.0)]
    assert prof.inclusive["<module> (router/cli.py)"] == 100
    assert dict(prof.areas) == {"asyncio": 70, "router.core": 30}
    assert area_of("/tmp/venv/lib/python3.11/site-packages/aiormq/channel.py") == "aiormq"
    assert area_of("redis/asyncio/client.py") == "redis"
    assert area_of("/usr/lib/python3.11/asyncio/tasks.py") == "asyncio"


def test_plan_and_message_sizes() -> None:
    quick = make_plan(build_parser().parse_args(["--quick"]))
    full = make_plan(build_parser().parse_args([]))
    assert quick.runs == 1 and full.runs == 3 and full.idle_sessions == 100_000
    sizes = message_sizes()
    # The baseline sends what the routed service receives and answers.
    assert sizes["direct_request"] == sizes["dispatch"] and sizes["dispatch"] > 150


def test_the_forwarder_carries_where_notices_go_in_the_turn_id() -> None:
    from bench.forwarder import _carried, _turn

    turn = _turn("cb.client.x" * 20, "m-1")
    assert len(turn) >= 16
    assert _carried(turn) == ("cb.client.x" * 20, "m-1")
    assert _turn("q", "m") != _turn("q", "m")  # unguessable, never repeated
