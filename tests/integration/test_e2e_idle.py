"""Idle timers end to end: router processes on RabbitMQ and Redis (PROTOCOL.md, "Idle timers")."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from typing import Any

import pytest

from .procs import Harness, eventually
from .test_e2e_actions import check, check_notice, deploy

pytestmark = pytest.mark.infra


async def test_timer_fires_after_every_replica_was_killed(e2e: Harness) -> None:
    a = await e2e.service("A")
    first = await e2e.router("A")
    second = await e2e.router("A")
    front = await e2e.frontend()
    mid = await front.send("s", "hi", meta={"lang": "en"})
    d = await a.next()
    await a.reply(d, "reply", state="waiting", idle=2)
    await e2e.idle("s")
    record = await e2e.record("s")
    assert record is not None and record.stack[0].timer is not None
    due_s = record.stack[0].timer.due_ms(record.last_client_ms) / 1000
    for proc in (first, second):
        proc.kill()  # SIGKILL: no replica is left to fire it
    for proc in (first, second):
        await proc.process.wait()
    # Let the timer fall due while no replica runs.
    await eventually(lambda: time.time() > due_s + 0.5, 10, "the timer's due time")
    await a.expect_none(0.1)
    await e2e.router("A")
    d = await a.next(timeout=20)
    assert time.time() >= due_s
    check(d, "s", "idle", 0, state="waiting", payload=2, meta={"lang": "en"})
    await a.reply(d, "reply", output=["still there?"])
    (notice,) = await front.wait(mid, 1, timeout=10)
    check_notice(notice, "s", mid, "output")
    assert notice["payload"] == "still there?"
    await a.expect_none(0.5)


async def test_message_arriving_while_the_timers_turn_waits_drops_it(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B", turn_timeout=30)
    a, b = s["A"], s["B"]
    await front.send("s", "hi")
    await a.reply(await a.next(), "open", service="B", state="a0", idle=1)
    await b.reply(await b.next(), "reply", state="b0")
    await e2e.idle("s")
    await front.send("s", "slow")
    held = await b.next()  # B's turn stays in flight past A's second of silence
    await eventually(_fired(e2e, "s"), 10, "A's timer to fire behind B's turn")
    newer = await front.send("s", "newer")  # accepted after the timer fired
    await eventually(_waiting(e2e, "s", 2), 10, "the message to wait behind the timer")
    await b.reply(held, "reply", state="b1")
    d = await b.next()
    check(d, "s", "message", 1, state="b1", payload="newer")
    await a.expect_none(0.5)
    await b.reply(d, "reply", output=["ok"])
    assert [n["type"] for n in await front.wait(newer, 1)] == ["output"]
    assert await e2e.stack("s") == [("A", "a0"), ("B", "b1")]


async def test_a_lower_frames_timer_discards_the_frames_above(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    mid = await front.send("s", "hi")
    await a.reply(await a.next(), "open", service="B", state="a0", idle=1)
    await b.reply(await b.next(), "reply", state="b0", idle=2)
    d = await a.next(timeout=10)
    check(d, "s", "idle", 0, state="a0", payload=1)
    assert await e2e.stack("s") == [("A", "a0")], "B was discarded before A's idle turn"
    await a.reply(d, "reply", output=["dropped the form"])
    (notice,) = await front.wait(mid, 1, timeout=10)
    check_notice(notice, "s", mid, "output")
    assert notice["payload"] == "dropped the form"
    await b.expect_none(2.5)  # B's own timer went with its frame


@pytest.mark.parametrize("redis_url", ["redis"], indirect=True)
@pytest.mark.parametrize("count", [50, 1000])
async def test_many_timers_due_in_one_second_fire_once_in_time(e2e: Harness, count: int) -> None:
    """Timers of many sessions due within about a second, two router replicas.

    Every timer fires exactly once, never early, and both replicas fire some of a burst too
    big for one scanner pass. The contract's
    "at most 1 s late" is asserted for 50 timers; for a burst of 1,000 the lateness is printed
    (on a 2-core machine the last ones of such a burst come about a second late: see
    docs/protocol.md, "Idle timers")."""
    sessions = [f"t{i}" for i in range(count)]
    a = await e2e.service("A", prefetch=1000)
    routers = [await e2e.router("A", turn_timeout=30), await e2e.router("A", turn_timeout=30)]
    front = await e2e.frontend()
    starts: dict[str, dict[str, Any]] = {}
    fired: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    all_started = asyncio.Event()

    async def serve(d: dict[str, Any]) -> None:
        if d["event"] == "start":
            starts[d["session"]] = d
            if len(starts) == len(sessions):
                all_started.set()
        else:
            fired[d["session"]].append((time.time(), d))
            await a.reply(d, "reply")

    a.handler = serve
    for at in range(0, len(sessions), 100):
        await asyncio.gather(*(front.send(s, "hi") for s in sessions[at:at + 100]))
    await asyncio.wait_for(all_started.wait(), 120)
    # Every timer falls due at about the same moment, ``target``: each reply asks for the
    # seconds left until then, and goes out in a small batch applied before the next one, so
    # that a backlog of replies does not spread the due times.
    target = time.time() + 30
    due: dict[str, float] = {}
    for at in range(0, len(sessions), 50):
        batch = sessions[at:at + 50]
        await asyncio.gather(*(a.reply(starts[s], "reply", idle=round(target - time.time(), 3))
                               for s in batch))
        for s in batch:
            await eventually(_has_timer(e2e, s, due), 60, f"the timer of {s}")
    assert time.time() < min(due.values()), "setting the timers took longer than planned"
    await eventually(lambda: len(fired) == len(sessions), 60,
                     "every timer to fire")
    await asyncio.sleep(1.5)  # room for any second firing to show
    lateness = []
    for s in sessions:
        turns = {d["turn"] for _, d in fired[s]}
        assert len(turns) == 1, (s, fired[s])
        at, d = fired[s][0]
        assert d["event"] == "idle" and d["attempt"] == 1, d
        assert at >= due[s], f"{s} fired {due[s] - at:.3f} s early"
        lateness.append(at - due[s])
    lateness.sort()
    p50 = statistics.median(lateness)
    p99 = lateness[int(len(lateness) * 0.99) - 1]
    spread = max(due.values()) - min(due.values())
    print(f"idle timer lateness over {len(lateness)} timers (due within {spread:.2f} s, "
          f"2 replicas): p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {lateness[-1] * 1000:.0f} ms")
    if count <= 50:
        assert lateness[-1] <= 1.0, f"a timer fired {lateness[-1]:.3f} s late"
    fires = []
    for proc in routers:
        await proc.stop()
        fires.append(_stat(proc.output(), "timers_fired"))
    assert sum(fires) == count, f"timers fired per replica: {fires}"
    if count > 100:
        # One scanner pass claims at most 100 hints, so a burst this size is shared; a small
        # one may all be taken by whichever replica scans first, which is as it should be.
        assert all(n > 0 for n in fires), f"timers fired per replica: {fires}"


def _fired(e2e: Harness, session: str) -> Any:
    async def check() -> bool:
        rec = await e2e.record(session)
        return rec is not None and rec.stack[0].timer is not None and rec.stack[0].timer.fired
    return check


def _waiting(e2e: Harness, session: str, count: int) -> Any:
    async def check() -> bool:
        rec = await e2e.record(session)
        return rec is not None and len(rec.waiting) == count
    return check


def _has_timer(e2e: Harness, session: str, due: dict[str, float]) -> Any:
    async def check() -> bool:
        if session in due:
            return True
        rec = await e2e.record(session)
        if rec is None or not rec.stack or rec.stack[0].timer is None:
            return False
        due[session] = rec.stack[0].timer.due_ms(rec.last_client_ms) / 1000
        return True
    return check


def _stat(output: str, name: str) -> int:
    for line in output.splitlines():
        if "event=router_stopped" in line:
            for part in line.split():
                key, _, value = part.partition("=")
                if key == name:
                    return int(value)
    return 0
