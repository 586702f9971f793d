"""A rolling redeploy with sessions in flight: two releases of a service with different
state versions run side by side, then the old one stops. Every session goes on counting
exactly, and no release ever handles a state it does not know (state versions)."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from .procs import Harness, Proc

pytestmark = pytest.mark.infra

V1, V2 = "tests.integration.versioned:counter_v1", "tests.integration.versioned:counter_v2"
SESSIONS = 12
ROUNDS = 8


async def worker(e2e: Harness, spec: str, log: Path) -> Proc:
    os.environ["VERSIONED_LOG"] = str(log)  # inherited by the child process only
    try:
        return await e2e.worker(spec, prefetch=4)
    finally:
        del os.environ["VERSIONED_LOG"]


async def test_rolling_redeploy_keeps_every_session_and_never_runs_old_code_on_new_state(
        e2e: Harness, tmp_path: Path) -> None:
    log = tmp_path / "handled.log"
    await e2e.router("counter", turn_timeout=10)
    old = await worker(e2e, V1, log)
    front = await e2e.frontend()
    sessions = [f"s{i}" for i in range(SESSIONS)]
    answers: dict[str, list[str]] = {s: [] for s in sessions}

    async def say(session: str, seq: int, text: str, count: int = 1) -> list[str]:
        mid = await front.send(session, text, seq=seq)
        got = await front.outputs(mid, count, timeout=30)
        answers[session].extend(got)
        return got

    await asyncio.gather(*(say(s, 1, "hello") for s in sessions))
    for seq in (2, 3):
        await asyncio.gather(*(say(s, seq, "tick") for s in sessions))

    new = await worker(e2e, V2, log)  # both releases serve the queue now
    for seq in range(4, 4 + ROUNDS // 2):
        await asyncio.gather(*(say(s, seq, "tick") for s in sessions))
    assert await old.stop() == 0  # the old release leaves
    for seq in range(4 + ROUNDS // 2, 4 + ROUNDS):
        await asyncio.gather(*(say(s, seq, "tick") for s in sessions))
    ends = [await front.send(s, "bye", seq=4 + ROUNDS) for s in sessions]
    for mid in ends:
        (notice,) = await front.wait(mid, 1, timeout=30)
        assert notice["type"] == "end", notice
    await new.stop()

    total = 2 + ROUNDS
    for session, got in answers.items():
        releases = [int(a[1]) for a in got]
        counts = [int(a.split(":")[1]) for a in got]
        assert counts == list(range(total + 1)), (session, got)  # nothing lost or repeated
        # once a session's state is version 2, release 1 never answers it again
        first_v2 = releases.index(2) if 2 in releases else len(releases)
        assert all(r == 2 for r in releases[first_v2:]), (session, got)
        assert releases[-ROUNDS // 2:] == [2] * (ROUNDS // 2), (session, got)
    lines = log.read_text().splitlines()
    assert lines and not [line for line in lines if line.endswith("UNKNOWN")], lines
    handled_by = {int(line.split()[0]) for line in lines}
    assert handled_by == {1, 2}
    print(f"\nturns handled: release 1 {sum(1 for x in lines if x[0] == '1')}, "
          f"release 2 {sum(1 for x in lines if x[0] == '2')}; "
          f"hand-backs by release 1: {len(re.findall('state_too_new', old.output()))}")
