"""Test cases every SessionStore adapter must pass, shared by the memory and Redis tests.

A test module subclasses :class:`StoreContract` (as ``TestSomething``) and provides two
fixtures: ``store`` (a fresh, empty store) and ``clock`` (a :class:`Clock` that matches the
store's notion of time).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

FAR = 3_600_000
"""An expiry an hour away, in ms: longer than any test."""


class Clock(Protocol):
    """The time a store judges expiry by, and a way to let it pass."""

    def now_ms(self) -> int: ...

    async def advance(self, ms: int) -> None: ...


async def _create(store: Any, clock: Clock, session: str = "s", **kwargs: Any) -> None:
    assert await store.commit(session, 0, b"rec-1", expire_at_ms=clock.now_ms() + FAR, **kwargs)


class StoreContract:
    """The semantics of router.store.SessionStore, as tests."""

    # -- records and versions -----------------------------------------------------------

    async def test_queue_names_are_remembered_as_a_set(self, store: Any) -> None:
        assert await store.known_queues() == set()
        await store.note_queues({"t.service.a", "t.service.b"})
        await store.note_queues({"t.service.a"})
        await store.note_queues(set())
        assert await store.known_queues() == {"t.service.a", "t.service.b"}

    async def test_missing_session_loads_empty(self, store: Any) -> None:
        snap = await store.load("nobody", "m1")
        assert (snap.version, snap.record, snap.outbox, snap.seen) == (0, None, [], False)

    async def test_version_increments_and_record_is_replaced(self, store: Any,
                                                             clock: Clock) -> None:
        expire = clock.now_ms() + FAR
        assert await store.commit("s", 0, b"one", expire_at_ms=expire)
        assert (await store.load("s")).version == 1
        assert await store.commit("s", 1, b"two", expire_at_ms=expire)
        snap = await store.load("s")
        assert (snap.version, snap.record) == (2, b"two")

    async def test_binary_record_round_trips(self, store: Any, clock: Clock) -> None:
        blob = bytes(range(256)) * 4
        assert await store.commit("s", 0, blob, expire_at_ms=clock.now_ms() + FAR)
        assert (await store.load("s")).record == blob

    async def test_cas_conflict_returns_false_and_changes_nothing(self, store: Any,
                                                                  clock: Clock) -> None:
        await _create(store, clock, append=[b"a"], remember="m1")
        ttl_before = await store.ttl_ms("s")
        for stale in (0, 2, 7):
            assert not await store.commit("s", stale, b"other", append=[b"b"], remember="m2",
                                          expire_at_ms=clock.now_ms() + 1)
        await clock.advance(50)
        snap = await store.load("s", "m2")
        assert (snap.version, snap.record, snap.outbox, snap.seen) == (1, b"rec-1", [b"a"], False)
        assert (await store.load("s", "m1")).seen
        assert await store.ttl_ms("s") > ttl_before - 10_000

    async def test_commit_expecting_a_version_of_a_missing_session_fails(self, store: Any,
                                                                         clock: Clock) -> None:
        assert not await store.commit("s", 1, b"x", append=[b"e"], remember="m",
                                      expire_at_ms=clock.now_ms() + FAR)
        snap = await store.load("s", "m")
        assert (snap.version, snap.record, snap.outbox, snap.seen) == (0, None, [], False)

    async def test_sessions_are_independent_whatever_their_ids(self, store: Any,
                                                               clock: Clock) -> None:
        ids = ["a{b}c", "{", "}", "{}", "séance 🙂", "x" * 256, "a{b}d", "s:1", "*"]
        for i, session in enumerate(ids):
            assert await store.commit(session, 0, f"r{i}".encode(), append=[f"e{i}".encode()],
                                      remember=f"m{i}", expire_at_ms=clock.now_ms() + FAR)
        for i, session in enumerate(ids):
            snap = await store.load(session, f"m{i}")
            assert (snap.version, snap.record, snap.outbox, snap.seen) == (
                1, f"r{i}".encode(), [f"e{i}".encode()], True)
            assert not (await store.load(session, f"m{(i + 1) % len(ids)}")).seen

    async def test_concurrent_commits_on_one_version_have_one_winner(self, store: Any,
                                                                     clock: Clock) -> None:
        await _create(store, clock)
        expire = clock.now_ms() + FAR
        results = await asyncio.gather(*(
            store.commit("s", 1, f"r{i}".encode(), append=[f"e{i}".encode()],
                         remember=f"m{i}", expire_at_ms=expire)
            for i in range(50)))
        assert results.count(True) == 1
        winner = results.index(True)
        snap = await store.load("s", f"m{winner}")
        assert (snap.version, snap.record, snap.outbox, snap.seen) == (
            2, f"r{winner}".encode(), [f"e{winner}".encode()], True)
        for i in range(50):
            if i != winner:
                assert not (await store.load("s", f"m{i}")).seen

    # -- outbox -------------------------------------------------------------------------

    async def test_outbox_keeps_append_order_across_commits(self, store: Any,
                                                            clock: Clock) -> None:
        await _create(store, clock, append=[b"a", b"b"])
        assert await store.commit("s", 1, b"r", append=[b"c"], expire_at_ms=clock.now_ms() + FAR)
        assert await store.commit("s", 2, b"r", expire_at_ms=clock.now_ms() + FAR)
        assert (await store.load("s")).outbox == [b"a", b"b", b"c"]

    async def test_large_append_keeps_every_entry_in_order(self, store: Any,
                                                           clock: Clock) -> None:
        entries = [f"e{i}".encode() for i in range(2500)]
        await _create(store, clock, append=entries)
        assert (await store.load("s")).outbox == entries

    async def test_discard_removes_exact_entries_once_each(self, store: Any,
                                                           clock: Clock) -> None:
        await _create(store, clock, append=[b"a", b"x", b"b", b"x", b"", b"\x00\xff", b"c"])
        await store.discard("s", [b"x", b"b", b"", b"missing"])
        assert (await store.load("s")).outbox == [b"a", b"x", b"\x00\xff", b"c"]
        await store.discard("s", [b"a", b"x", b"\x00\xff", b"c"])
        snap = await store.load("s")
        assert (snap.version, snap.outbox) == (1, [])
        await store.discard("s", [b"a"])  # on an empty outbox: nothing to do
        await store.discard("nobody", [b"a"])
        assert await store.commit("s", 1, b"r", append=[b"d"], expire_at_ms=clock.now_ms() + FAR)
        assert (await store.load("s")).outbox == [b"d"]

    async def test_discard_leaves_entries_appended_meanwhile(self, store: Any,
                                                             clock: Clock) -> None:
        await _create(store, clock, append=[b"a"])
        published = (await store.load("s")).outbox
        assert await store.commit("s", 1, b"r", append=[b"b"], expire_at_ms=clock.now_ms() + FAR)
        await store.discard("s", published)
        assert (await store.load("s")).outbox == [b"b"]

    # -- dedup memory -------------------------------------------------------------------

    async def test_dedup_remembers_only_when_asked(self, store: Any, clock: Clock) -> None:
        await _create(store, clock, remember="m1")
        assert await store.commit("s", 1, b"r", expire_at_ms=clock.now_ms() + FAR)
        assert (await store.load("s", "m1")).seen
        assert not (await store.load("s", "m2")).seen
        assert not (await store.load("s")).seen

    async def test_dedup_keeps_the_last_thousand_and_forgets_older(self, store: Any,
                                                                   clock: Clock) -> None:
        expire = clock.now_ms() + FAR
        total = 1005
        for i in range(total):
            assert await store.commit("s", i, b"r", remember=f"id-{i}", expire_at_ms=expire)
        for i in range(total - 1000, total):
            assert (await store.load("s", f"id-{i}")).seen, i
        for i in range(total - 1000):
            assert not (await store.load("s", f"id-{i}")).seen, i

    # -- expiry -------------------------------------------------------------------------

    async def test_expiry_in_the_past_removes_everything(self, store: Any,
                                                         clock: Clock) -> None:
        await _create(store, clock, append=[b"a"], remember="m1")
        assert await store.commit("s", 1, b"r", append=[b"b"], remember="m2",
                                  expire_at_ms=clock.now_ms() - 1)
        snap = await store.load("s", "m1")
        assert (snap.version, snap.record, snap.outbox, snap.seen) == (0, None, [], False)
        assert not (await store.load("s", "m2")).seen
        assert await store.ttl_ms("s") == -2

    async def test_session_vanishes_after_its_expiry(self, store: Any, clock: Clock) -> None:
        assert await store.commit("s", 0, b"r", append=[b"a"], remember="m1",
                                  expire_at_ms=clock.now_ms() + 300)
        assert 0 < await store.ttl_ms("s") <= 300
        assert (await store.load("s", "m1")).seen
        await clock.advance(500)
        snap = await store.load("s", "m1")
        assert (snap.version, snap.record, snap.outbox, snap.seen) == (0, None, [], False)
        # A new session starts from version 0 again.
        assert await store.commit("s", 0, b"new", expire_at_ms=clock.now_ms() + FAR)

    async def test_expiry_is_moved_on_keys_that_existed_before(self, store: Any,
                                                               clock: Clock) -> None:
        await _create(store, clock, append=[b"a"], remember="m1")
        # This commit touches neither the outbox nor the dedup memory, yet shortens both.
        assert await store.commit("s", 1, b"r", expire_at_ms=clock.now_ms() + 300)
        await clock.advance(500)
        snap = await store.load("s", "m1")
        assert (snap.version, snap.outbox, snap.seen) == (0, [], False)

    async def test_expiry_is_extended_by_a_later_commit(self, store: Any, clock: Clock) -> None:
        assert await store.commit("s", 0, b"r", append=[b"a"], remember="m1",
                                  expire_at_ms=clock.now_ms() + 300)
        assert await store.commit("s", 1, b"r2", expire_at_ms=clock.now_ms() + FAR)
        await clock.advance(500)
        snap = await store.load("s", "m1")
        assert (snap.version, snap.record, snap.outbox, snap.seen) == (2, b"r2", [b"a"], True)
        assert await store.ttl_ms("s") > FAR - 60_000

    # -- deadline hints -----------------------------------------------------------------

    async def test_claim_takes_due_hints_and_leases_them(self, store: Any) -> None:
        await store.add_hint("s1", 1000)
        await store.add_hint("s2", 2000)
        assert await store.claim_due(999, 10_000) == []
        [(session, lease)] = await store.claim_due(1500, 10_000)
        assert session == "s1" and lease >= 11_500
        assert await store.claim_due(1500, 10_000) == []  # leased, not due again yet
        [(session2, lease2)] = await store.claim_due(2000, 10_000)
        assert session2 == "s2" and lease2 != lease

    async def test_a_lease_that_runs_out_fires_again(self, store: Any) -> None:
        await store.add_hint("s", 1000)
        [(_, lease)] = await store.claim_due(1000, 5000)
        assert await store.claim_due(lease - 1, 5000) == []
        [(session, lease2)] = await store.claim_due(lease, 5000)
        assert session == "s" and lease2 > lease

    async def test_add_hint_overwrites(self, store: Any) -> None:
        await store.add_hint("s", 1000)
        await store.add_hint("s", 5000)
        assert await store.claim_due(4999, 100) == []
        assert [s for s, _ in await store.claim_due(5000, 100)] == ["s"]

    async def test_settle_removes_or_moves_the_claimed_hint(self, store: Any) -> None:
        await store.add_hint("gone", 1000)
        await store.add_hint("later", 1000)
        leases = dict(await store.claim_due(1000, 5000))
        await store.settle_hint("gone", leases["gone"], None)
        await store.settle_hint("later", leases["later"], 8000)
        assert await store.claim_due(7999, 5000) == []
        assert [s for s, _ in await store.claim_due(10**12, 5000)] == ["later"]

    async def test_settle_keeps_a_hint_rewritten_after_the_claim(self, store: Any,
                                                                 clock: Clock) -> None:
        await store.add_hint("a", 1000)
        await store.add_hint("b", 1000)
        leases = dict(await store.claim_due(1000, 60_000))
        # A step for each session ran meanwhile and wrote a new hint.
        await store.add_hint("a", 3000)
        await _create(store, clock, "b", hint_ms=4000)
        await store.settle_hint("a", leases["a"], None)
        await store.settle_hint("b", leases["b"], 50_000)
        assert [s for s, _ in await store.claim_due(3000, 60_000)] == ["a"]
        assert [s for s, _ in await store.claim_due(4000, 60_000)] == ["b"]

    async def test_settle_with_an_old_lease_does_not_touch_a_new_claim(self, store: Any) -> None:
        await store.add_hint("s", 1000)
        [(_, old)] = await store.claim_due(1000, 5000)
        [(_, new)] = await store.claim_due(old, 5000)
        await store.settle_hint("s", old, None)
        assert [s for s, _ in await store.claim_due(new, 5000)] == ["s"]

    async def test_leases_are_unique_even_for_the_same_now(self, store: Any) -> None:
        await store.add_hint("s", 1000)
        [(_, first)] = await store.claim_due(1000, 5000)
        await store.add_hint("s", 1000)  # a step made it due again at once
        [(_, second)] = await store.claim_due(1000, 5000)
        assert first != second
        await store.settle_hint("s", first, None)  # the first claimer settles late
        assert [s for s, _ in await store.claim_due(second, 5000)] == ["s"]

    async def test_discard_removes_a_cleared_deadline_hint_only_if_unchanged(
            self, store: Any) -> None:
        await store.add_hint("a", 1000)
        await store.add_hint("b", 2000)
        await store.add_hint("c", 1000)
        await store.discard("a", [], unhint_ms=1000)  # a's deadline cleared: hint goes
        await store.discard("b", [], unhint_ms=1000)  # another step rewrote b's hint: stays
        [(_, lease)] = await store.claim_due(1000, 5000)  # c
        await store.discard("c", [], unhint_ms=1000)  # a scanner holds c's lease: stays
        claimed = {s for s, _ in await store.claim_due(lease + 1, 5000)}
        assert claimed == {"b", "c"}

    async def test_commit_refuses_an_id_already_remembered(self, store: Any,
                                                           clock: Clock) -> None:
        expire = clock.now_ms() + FAR
        assert await store.commit("s", 0, b"r1", remember="m1", expire_at_ms=expire)
        assert not await store.commit("s", 1, b"r2", append=[b"x"], remember="m1",
                                      expire_at_ms=expire)
        snap = await store.load("s")
        assert (snap.version, snap.record, snap.outbox) == (1, b"r1", [])
        assert await store.commit("s", 1, b"r2", remember="m2", expire_at_ms=expire)

    async def test_claim_respects_the_limit_and_misses_nothing(self, store: Any) -> None:
        sessions = {f"s{i}" for i in range(20)}
        for i, session in enumerate(sorted(sessions)):
            await store.add_hint(session, 1000 + i)
        first = await store.claim_due(2000, 60_000, limit=7)
        rest = await store.claim_due(2000, 60_000, limit=100)
        assert len(first) == 7
        assert {s for s, _ in first} | {s for s, _ in rest} == sessions
        assert len(first) + len(rest) == 20

    async def test_concurrent_claims_hand_out_each_hint_once(self, store: Any) -> None:
        sessions = {f"s{i}" for i in range(30)}
        for session in sessions:
            await store.add_hint(session, 1000)
        batches = await asyncio.gather(*(store.claim_due(1000, 60_000, limit=4)
                                         for _ in range(10)))
        claimed = [s for batch in batches for s, _ in batch]
        assert len(claimed) == len(set(claimed))
        claimed += [s for s, _ in await store.claim_due(1000, 60_000)]
        assert sorted(claimed) == sorted(sessions)

    async def test_failed_commit_still_writes_its_hint(self, store: Any, clock: Clock) -> None:
        assert not await store.commit("s", 3, b"r", expire_at_ms=clock.now_ms() + FAR,
                                      hint_ms=1234)
        assert await store.claim_due(1233, 100) == []
        assert [s for s, _ in await store.claim_due(1234, 100)] == ["s"]

    async def test_ping_answers(self, store: Any) -> None:
        await store.ping()

    # -- history, deletion, sampling ---------------------------------------------------------

    async def test_history_is_appended_with_the_commit_and_bounded(self, store: Any,
                                                                    clock: Clock) -> None:
        expire = clock.now_ms() + FAR
        for version in range(5):
            assert await store.commit("s", version, b"r", expire_at_ms=expire,
                                      history=[f"h{version}a".encode(), f"h{version}b".encode()],
                                      history_max=3)
        assert await store.history("s") == [b"h3b", b"h4a", b"h4b"]

    async def test_history_of_a_refused_commit_is_not_written(self, store: Any,
                                                              clock: Clock) -> None:
        await _create(store, clock, history=[b"one"], history_max=10)
        assert not await store.commit("s", 0, b"x", expire_at_ms=clock.now_ms() + FAR,
                                      history=[b"two"], history_max=10)
        assert await store.history("s") == [b"one"]

    async def test_history_off_writes_nothing(self, store: Any, clock: Clock) -> None:
        await _create(store, clock, history=[b"one"], history_max=0)
        assert await store.history("s") == []

    async def test_history_expires_with_the_session(self, store: Any, clock: Clock) -> None:
        assert await store.commit("s", 0, b"r", expire_at_ms=clock.now_ms() + 1000,
                                  history=[b"h"], history_max=10)
        await clock.advance(1500)
        assert await store.history("s") == []
        assert (await store.load("s")).version == 0

    async def test_delete_session_removes_everything_of_it_only(self, store: Any,
                                                                clock: Clock) -> None:
        await _create(store, clock, append=[b"e"], remember="m", history=[b"h"],
                      history_max=10, hint_ms=1)
        await _create(store, clock, session="other", history=[b"h"], history_max=10)
        assert await store.delete_session("s")
        snap = await store.load("s", "m")
        assert (snap.version, snap.record, snap.outbox, snap.seen) == (0, None, [], False)
        assert await store.history("s") == []
        assert await store.claim_due(10, 1000) == []
        assert not await store.delete_session("s")
        assert (await store.load("other")).version == 1
        assert await store.history("other") == [b"h"]

    async def test_scan_records_finds_sessions_up_to_the_limit(self, store: Any,
                                                               clock: Clock) -> None:
        for i in range(7):
            await _create(store, clock, session=f"s{i}")
        found = [blob async for blob in store.scan_records(100)]
        assert sorted(found) == [b"rec-1"] * 7
        assert len([blob async for blob in store.scan_records(3)]) == 3
