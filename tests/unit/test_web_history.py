"""The web chat's conversation history in memory, the command's settings, the rate limit."""

from __future__ import annotations

from typing import Any

import pytest

from router.channels.web.command import web_settings
from router.channels.web.gateway import TokenBucket, _depth
from router.channels.web.history import MemoryHistory
from worker_sdk.errors import ConfigError


class Ear:
    def __init__(self) -> None:
        self.entries: list[tuple[int, str]] = []
        self.takeovers: list[str] = []

    def on_entry(self, seq: int, raw: str) -> None:
        self.entries.append((seq, raw))

    def on_takeover(self, conn_id: str) -> None:
        self.takeovers.append(conn_id)


async def test_entries_are_numbered_once_per_key_and_client_seqs_counted() -> None:
    history = MemoryHistory(keep=3)
    ear = Ear()
    await history.listen("web:a", ear)
    first = await history.append("web:a", "c:m1", '"you"', client=True)
    again = await history.append("web:a", "c:m1", '"you"', client=True)
    notice = await history.append("web:a", "n:x", '"bot"')
    second = await history.append("web:a", "c:m2", '"you2"', client=True)
    assert (first.seq, first.client_seq, first.new) == (1, 1, True)
    assert (again.seq, again.client_seq, again.new) == (1, 1, False)
    assert (notice.seq, notice.client_seq) == (2, 0)
    assert (second.seq, second.client_seq) == (3, 2)
    assert ear.entries == [(1, '"you"'), (2, '"bot"'), (3, '"you2"')]
    assert await history.after("web:a", 1) == [(2, '"bot"'), (3, '"you2"')]
    await history.append("web:a", "n:y", '"bot2"')
    # Only the last `keep` entries are kept.
    assert [seq for seq, _ in await history.after("web:a", 0)] == [2, 3, 4]
    assert await history.after("web:other", 0) == []


async def test_listeners_hear_takeovers_until_they_stop_listening() -> None:
    history = MemoryHistory()
    ear, other = Ear(), Ear()
    await history.listen("web:a", ear)
    await history.listen("web:b", other)
    await history.announce("web:a", "conn2")
    assert ear.takeovers == ["conn2"] and other.takeovers == []
    await history.unlisten("web:a", ear)
    await history.unlisten("web:a", ear)  # twice is harmless
    await history.append("web:a", "n:1", "1")
    assert ear.entries == []


def test_web_settings_read_options_then_environment_then_defaults() -> None:
    got = web_settings({"port": "9000"}, {"CLOUDBUNCH_WEB_PORT": "1", "CLOUDBUNCH_WEB_DEBUG":
                                          "yes", "CLOUDBUNCH_WEB_RATE": "2.5"})
    assert (got["port"], got["debug"], got["rate"], got["history"]) == (9000, True, 2.5, 200)
    assert web_settings({}, {})["host"] == "127.0.0.1"


@pytest.mark.parametrize(("options", "env", "message"), [
    ({"port": "http"}, {}, "--port / CLOUDBUNCH_WEB_PORT must be a whole number"),
    ({"port": "0"}, {}, "--port / CLOUDBUNCH_WEB_PORT must be from 1 to 65535, not 0"),
    ({"port": "70000"}, {}, "--port / CLOUDBUNCH_WEB_PORT must be from 1 to 65535"),
    ({}, {"CLOUDBUNCH_WEB_RATE": "fast"}, "CLOUDBUNCH_WEB_RATE must be a number"),
    ({}, {"CLOUDBUNCH_WEB_DEBUG": "maybe"}, "CLOUDBUNCH_WEB_DEBUG must be 1 or 0"),
])
def test_web_settings_name_the_bad_value(options: dict[str, Any], env: dict[str, str],
                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        web_settings(options, env)


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=0.0001, burst=3)
    assert [bucket.take() for _ in range(5)] == [True, True, True, False, False]


def test_depth_limit() -> None:
    value: Any = 1
    for _ in range(8):
        value = [value]
    assert _depth(value, 8)
    assert not _depth([value], 8)
    assert _depth({"a": {"b": 1}}, 2) and not _depth({"a": {"b": [1]}}, 2)
