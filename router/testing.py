"""Test kit for service authors: run a multi-service flow through the real router core, in
memory, in a few lines::

    from router.testing import FlowTest

    async def test_greeting():
        async with FlowTest([menu, order], root="menu") as flow:
            assert await flow.say("hi") == ["Pizza or drinks?"]
            assert await flow.stack() == ["menu"]

Time is virtual: it stands still until the test moves it, so a 30-minute timeout is tested
in milliseconds::

        assert await flow.say("order") == ["Which pizza?"]
        assert await flow.advance(60) == ["Are you still there? Which pizza?"]

Each call returns once everything it caused has run to the end (the in-memory broker knows,
:meth:`worker_sdk.MemoryBroker.join`): no test waits on the clock.

Handler exceptions fail the test by default (``raise_errors=True``): a fake must not hide
failures. Pass ``raise_errors=False`` to test how a flow copes with a crashing service.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker_sdk import wire
from worker_sdk.service import Service

from . import history, sessions
from .config import RouterConfig
from .engine import Engine, VirtualClock
from .replay import Report, replay_export


class HandlerError(AssertionError):
    """A service handler raised during a FlowTest turn."""


class _Catch(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


class FlowTest:
    """An embedded deployment of ``services`` with ``root`` as the root service."""

    def __init__(self, services: Sequence[Service], root: str, *, session: str = "test",
                 raise_errors: bool = True, **options: Any) -> None:
        options.setdefault("turn_timeout", 2.0)
        options.setdefault("namespace", "flowtest")
        self.clock = VirtualClock()
        """The test's clock: it moves only by :meth:`advance`."""
        self.engine = Engine(services, RouterConfig(root=root, **options), clock=self.clock)
        self.session = session
        self.raise_errors = raise_errors
        self._catch = _Catch()

    async def __aenter__(self) -> FlowTest:
        logging.getLogger("worker_sdk").addHandler(self._catch)
        await self.engine.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        logging.getLogger("worker_sdk").removeHandler(self._catch)
        await self.engine.stop()

    async def send(self, payload: Any, *, session: str | None = None,
                   entry: str | None = None, meta: dict[str, Any] | None = None
                   ) -> list[wire.Notice]:
        """Send one message; return every notice of the chain it started."""
        notices = await self.engine.converse(session or self.session, payload, entry=entry,
                                             meta=meta)
        self._check()
        return notices

    async def advance(self, seconds: float, *, session: str | None = None) -> list[Any]:
        """Let ``seconds`` of virtual time pass with nobody speaking; return what the person
        reads meanwhile (as :meth:`say` shows it): idle timers and turn deadlines fire at
        their moments, and every chain they start runs to its end."""
        await self.engine.advance(seconds)
        self._check()
        return _shown(self.engine.take(session or self.session))

    async def say(self, payload: Any, *, session: str | None = None, **kw: Any) -> list[Any]:
        """Send one message; return the output payloads of its chain (what a person reads).

        An ``unhandled``, ``end`` or ``error`` notice is appended as ``"<unhandled>"``,
        ``"<end>"`` or ``"<error CODE: MESSAGE>"`` (``"<error CODE>"`` without a message) so a
        test sees how the chain ended, with what a real client would be told.
        """
        return _shown(await self.send(payload, session=session, **kw))

    async def end(self, *, session: str | None = None) -> list[wire.Notice]:
        """End the session (``type: end``)."""
        return await self.engine.converse(session or self.session, None, end=True)

    async def stack(self, *, session: str | None = None) -> list[str]:
        """The services on the session's stack, root first."""
        rec = await self.engine.record(session or self.session)
        return [] if rec is None else [f.service for f in rec.stack]

    async def states(self, *, session: str | None = None) -> list[Any]:
        """The saved states on the session's stack, root first."""
        rec = await self.engine.record(session or self.session)
        return [] if rec is None else [f.state for f in rec.stack]

    async def export(self, *, session: str | None = None) -> dict[str, Any]:
        """The session's recorded history as an export document (what ``cloudbunch session
        export`` writes): record a conversation here, replay it against changed code."""
        session = session or self.session
        return await sessions.export(self.engine.store, session, self.engine.config.namespace)

    async def replay(self, export: str | Path | dict[str, Any], *,
                     ignore_state: bool = False) -> Report:
        """Replay an exported session (a file of ``cloudbunch session export``, or a document)
        against this test's services; ``report.ok`` when no turn acts differently."""
        if isinstance(export, dict):
            document = export
        else:
            document = history.from_json(Path(export).read_text(encoding="utf-8"),
                                         where=str(export))
        return await replay_export(document, self.engine.services,
                                   root=self.engine.config.root, ignore_state=ignore_state,
                                   max_depth=self.engine.config.max_depth)

    def _check(self) -> None:
        if self.raise_errors and self._catch.records:
            record = self._catch.records.pop(0)
            self._catch.records.clear()
            exc = record.exc_info[1] if record.exc_info else None
            cause = f"{type(exc).__name__}: {exc}" if exc is not None else "an exception"
            raise HandlerError(f"a service handler raised {cause} "
                               f"({record.getMessage()})") from exc


def _shown(notices: list[wire.Notice]) -> list[Any]:
    """Notices as a person reads them; the ends of chains in angle brackets, an error with
    its message as a real client gets it."""
    shown: list[Any] = []
    for n in notices:
        if n.type == "output":
            shown.append(n.payload)
        elif n.type == "error":
            error = n.error or wire.ErrorInfo("")
            shown.append(f"<error {error.code}: {error.message}>" if error.message
                         else f"<error {error.code}>")
        else:
            shown.append(f"<{n.type}>")
    return shown
