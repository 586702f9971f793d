"""The records this replica last wrote or read, and whether skipping the load pays."""

from __future__ import annotations

import time
from collections import OrderedDict

from .core import Record


class RecordCache:
    """The records this replica last wrote or read, to skip the load of the next step.

    Only a hint: a stale entry makes the commit's compare-and-set fail, and the step then
    loads. Entries expire quickly (a session that expired in Redis restarts at version 0).
    """

    def __init__(self, max_age: float, size: int = 10_000) -> None:
        self.max_age = max_age
        self.size = size
        self._entries: OrderedDict[str, tuple[int, Record | None, float]] = OrderedDict()

    def get(self, session: str) -> tuple[int, Record | None] | None:
        entry = self._entries.get(session)
        if entry is None:
            return None
        if time.monotonic() - entry[2] > self.max_age:
            del self._entries[session]
            return None
        return entry[0], entry[1]

    def put(self, session: str, version: int, record: Record | None) -> None:
        self._entries[session] = (version, record, time.monotonic())
        self._entries.move_to_end(session)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, session: str) -> None:
        self._entries.pop(session, None)


class FastPathGate:
    """Whether skipping the load pays: with several replicas sharing sessions, cached
    records are often stale and a failed commit costs more than the load it saved."""

    def __init__(self) -> None:
        self.score = 1.0
        self._skipped = 0

    def use(self) -> bool:
        if self.score >= 0.5:
            return True
        self._skipped += 1
        if self._skipped >= 32:  # probe now and then: the replicas may have changed
            self._skipped = 0
            return True
        return False

    def outcome(self, applied: bool) -> None:
        self.score = 0.9 * self.score + (0.1 if applied else 0.0)
