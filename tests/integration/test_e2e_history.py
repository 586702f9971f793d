"""Session history on the real servers: recorded by the router (bounded, expiring), printed,
exported and replayed against unchanged and changed code; sessions listed and deleted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.redis_store import RedisStore

from .procs import REPO, Harness
from .test_e2e_cli import run_cli

pytestmark = pytest.mark.infra

FLOWS = ("tests.integration.flows:root", "tests.integration.flows:step")
CHANGED = ("tests.integration.flows_changed:root", "tests.integration.flows_changed:step")


async def converse(e2e: Harness, session: str, *texts: str) -> None:
    front = await e2e.frontend()
    for seq, text in enumerate(texts, start=1):
        mid = await front.send(session, text, seq=seq)
        await front.outputs(mid, 1, timeout=15)
    await e2e.idle(session)


def store_of(e2e: Harness) -> RedisStore:
    return RedisStore(e2e.redis_url, e2e.ns)


async def test_history_export_and_replay_of_a_real_conversation(e2e: Harness,
                                                                 tmp_path: Path) -> None:
    await e2e.router("root")
    await e2e.worker(*FLOWS)
    await converse(e2e, "web:7", "a", "hello", "b")
    where = ("--redis-url", e2e.redis_url, "--namespace", e2e.ns)

    code, out, err = await run_cli("session", "history", "web:7", *where)
    assert code == 0, err
    assert "client   says \"hello\"" in out
    assert "root <- result" in out and "> \"HELLO#2\"" in out
    code, out, _ = await run_cli("session", "history", "web:7", "--json", *where)
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["kind"] for e in lines].count("client") == 3

    export = tmp_path / "web7.json"
    code, _, err = await run_cli("session", "export", "web:7", "-o", str(export), *where)
    assert code == 0, err
    args = [str(export)] + [a for spec in FLOWS for a in ("--service", spec)]
    code, out, err = await run_cli("replay", *args)
    assert code == 0, out + err
    assert "no differences" in out
    changed = [str(export)] + [a for spec in CHANGED for a in ("--service", spec)]
    code, out, err = await run_cli("replay", *changed)
    assert code == 1, out + err
    assert out.count(" turn ") == 1, out  # exactly the changed turn
    assert "turn 6 (root <- result)" in out and "HELLO!#2" in out


async def test_history_is_bounded_and_goes_with_the_session(e2e: Harness) -> None:
    await e2e.router("root", history=5, session_ttl=3)
    await e2e.worker(*FLOWS)
    await converse(e2e, "s", "a", "b", "c")
    store = store_of(e2e)
    try:
        items = await store.history("s")
        assert len(items) == 5
        async def gone() -> bool:
            return await store.history("s") == [] and (await store.load("s")).version == 0
        from .procs import eventually
        await eventually(gone, 30, "the session and its history to expire")
    finally:
        await store.close()


async def test_delete_leaves_no_key_of_the_session_and_list_shows_the_others(
        e2e: Harness) -> None:
    await e2e.router("root")
    await e2e.worker(*FLOWS)
    await converse(e2e, "keep", "x")
    await converse(e2e, "forget-me", "y", "z")
    where = ("--redis-url", e2e.redis_url, "--namespace", e2e.ns)
    code, out, _ = await run_cli("session", "list", *where)
    assert code == 0
    assert "forget-me" in out and "keep" in out and "root" in out
    store = store_of(e2e)
    try:
        keys = store.session_keys("forget-me")
        code, out, err = await run_cli("session", "delete", "forget-me", *where)
        assert code == 0, err
        raw = store._redis
        assert [k for k in keys if await raw.exists(k)] == []
        assert await raw.zscore(store._hint_key("forget-me"), "forget-me") is None
        assert (await store.load("keep")).version > 0
        code, _, err = await run_cli("session", "delete", "forget-me", *where)
        assert code == 1 and "nothing to delete" in err
    finally:
        await store.close()
    assert REPO.exists()
