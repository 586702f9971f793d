"""State versions: a service's saved state carries the version of the code that saved it.

An SDK convention, not part of the wire contract: a service that declares
``Service("order", state_version=3)`` saves its state as the map
``{"cb_state_version": 3, "cb_state": STATE}``. The router stores it like any other state; a
party that does not use the SDK never sees it, because a frame's state only ever goes back to
the service that saved it. A state without the wrapper is version 1 (what a service saved
before it declared versions).

Pure functions only: :mod:`worker_sdk.service` applies them to each dispatch and reply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

VERSION_KEY: Final = "cb_state_version"
STATE_KEY: Final = "cb_state"

Migration = Callable[[Any], Any]
"""Turns a state of version N into one of version N + 1."""


class StateTooNew(Exception):
    """The saved state was written by a newer version of the service than this worker's."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(f"the saved state has version {found}, newer than this worker's "
                         f"state_version {known}: it must be handled by a newer worker")
        self.found = found
        self.known = known


def unwrap(stored: Any) -> tuple[int, Any]:
    """The version and the service's own state of a stored state."""
    if (isinstance(stored, dict) and len(stored) == 2 and STATE_KEY in stored
            and isinstance(stored.get(VERSION_KEY), int)
            and not isinstance(stored[VERSION_KEY], bool)):
        return stored[VERSION_KEY], stored[STATE_KEY]
    return 1, stored


def wrap(version: int, state: Any) -> Any:
    """The stored form of ``state`` saved by code of ``version`` (version 1: unchanged)."""
    if version == 1:
        return state
    return {VERSION_KEY: version, STATE_KEY: state}


def upgrade(stored: Any, version: int, migrations: Mapping[int, Migration]) -> tuple[bool, Any]:
    """Bring a stored state to ``version``: ``(migrated, state)``, the state unwrapped.

    ``migrations[n]`` turns version n into n + 1. Raises StateTooNew for a newer state, and
    LookupError when a step is missing (a state older than the oldest migration).
    """
    found, state = unwrap(stored)
    if found > version:
        raise StateTooNew(found, version)
    for step in range(found, version):
        if step not in migrations:
            raise LookupError(f"no migration from state version {step} to {step + 1}: "
                              f"declare one with @service.migration({step})")
        state = migrations[step](state)
    return found != version, state


def check_migrations(version: int, migrations: Mapping[int, Migration]) -> None:
    """Raise ValueError unless every step from 1 up to ``version`` has a migration.

    A service may start versioning late (its oldest live states are version k > 1): then
    only the steps from the lowest declared one are required.
    """
    if version < 1:
        raise ValueError(f"state_version must be >= 1, not {version}")
    if not migrations:
        return
    bad = [n for n in migrations if not 1 <= n < version]
    if bad:
        raise ValueError(f"migration from version {bad[0]} does not lead to a version up to "
                         f"state_version {version}")
    lowest = min(migrations)
    missing = [n for n in range(lowest, version) if n not in migrations]
    if missing:
        raise ValueError(f"no migration from state version {missing[0]} to {missing[0] + 1}")
