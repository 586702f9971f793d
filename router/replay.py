"""Replay: run the client messages of recorded sessions through new service code, in memory.

A turn is a pure function of its dispatch, so a recorded conversation is a test case: the
client messages of an export (:mod:`router.history`) go through the real core, at their
recorded times, with the given services answering in process; each turn the new code takes
is compared with the recorded one (service, event, action, state, output, stack). Used by
``cloudbunch replay`` (exit 1 when anything differs) and by tests through
:func:`router.testing.replay`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from worker_sdk import wire
from worker_sdk.service import Service

from . import core, history
from .config import RouterConfig
from .core import ClientArrived, CoreConfig, Outcome, Record, ReplyArrived, Tick, Undeliverable

COMPARED = ("service", "event", "action", "state", "output", "stack")
"""What must match, per turn, between the recording and the replay."""

MAX_TURNS_PER_MESSAGE = 10_000
"""A chain longer than this in replay is new code looping (an open/close cycle, say)."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One turn where the new code acts differently from the recording."""

    session: str
    turn: int
    """1-based position of the turn in the session."""
    fields: dict[str, tuple[Any, Any]]
    """Per differing field: (recorded, replayed); ``None`` for a turn one side lacks."""
    context: str = ""

    def lines(self) -> list[str]:
        head = f"{self.session} turn {self.turn}"
        if self.context:
            head += f" ({self.context})"
        out = [head + ":"]
        for name, (was, now) in self.fields.items():
            out.append(f"  {name}: recorded {history._short(was, 300)}")
            out.append(f"  {' ' * len(name)}  replayed {history._short(now, 300)}")
        return out


@dataclass(slots=True)
class Report:
    """What a replay found: differences, and how much it compared."""

    differences: list[Difference] = field(default_factory=list)
    sessions: int = 0
    turns: int = 0

    @property
    def ok(self) -> bool:
        return not self.differences


class ReplayError(Exception):
    """A recording that cannot be replayed (no root to open, say)."""


async def replay_export(document: dict[str, Any], services: Sequence[Service], *,
                        root: str | None = None, ignore_state: bool = False,
                        max_depth: int = 32) -> Report:
    """Replay one export (as read by :func:`router.history.from_json`)."""
    report = Report()
    await _replay_into(report, document, services, root, ignore_state, max_depth)
    return report


async def replay_files(paths: Sequence[str], services: Sequence[Service], *,
                       root: str | None = None, ignore_state: bool = False,
                       max_depth: int = 32) -> Report:
    """Replay exported session files; BadExport names a file that is not one."""
    report = Report()
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            document = history.from_json(fh.read(), where=path)
        await _replay_into(report, document, services, root, ignore_state, max_depth)
    return report


async def _replay_into(report: Report, document: dict[str, Any], services: Sequence[Service],
                       root: str | None, ignore_state: bool, max_depth: int) -> None:
    items: list[dict[str, Any]] = document["entries"]
    session: str = document["session"]
    turns = [i for i in items if i.get("kind") == "turn"]
    if turns and (turns[0].get("depth") != 0 or turns[0].get("event") != "start"):
        raise ReplayError(f"{session}: the recorded history starts in the middle of the "
                          "conversation (the router keeps the last --history entries of a "
                          "session); replay needs it from its first message: raise --history")
    root = root or _recorded_root(items)
    if root is None:
        raise ReplayError(f"{session}: the recording opens no root frame; pass the root "
                          "service explicitly (--root)")
    recorded = turns
    cfg = RouterConfig(root=root, max_depth=max_depth).core()
    replayed = [i for i in await _run(session, items, services, cfg) if i["kind"] == "turn"]
    report.sessions += 1
    report.turns += len(recorded)
    compared = COMPARED if not ignore_state else tuple(c for c in COMPARED if c != "state")
    for index, (was, now) in enumerate(itertools.zip_longest(recorded, replayed), start=1):
        diff = {}
        a, b = _view(was), _view(now)
        for name in compared:
            if a.get(name) != b.get(name):
                diff[name] = (a.get(name), b.get(name))
        if diff:
            source = was or now or {}
            context = f"{source.get('service')} <- {source.get('event')}"
            report.differences.append(Difference(session, index, diff, context))


def _recorded_root(items: list[dict[str, Any]]) -> str | None:
    for item in items:
        if item.get("kind") == "turn" and item.get("depth") == 0 and item.get("event") == "start":
            return item.get("service")
    return None


def _view(item: dict[str, Any] | None) -> dict[str, Any]:
    """The compared fields of a turn entry (all None for a missing turn)."""
    if item is None:
        return {}
    reply = item.get("reply") or {}
    return {"service": item.get("service"), "event": item.get("event"),
            "action": reply.get("action"), "state": reply.get("state", "<kept>"),
            "output": reply.get("output", []), "stack": item.get("stack")}


async def _run(session: str, items: list[dict[str, Any]], services: Sequence[Service],
               cfg: CoreConfig) -> list[dict[str, Any]]:
    """Run the recorded client messages through ``services``; the history it makes."""
    by_queue = {s.queue(cfg.namespace): s for s in services}
    counter = itertools.count(1)
    record: Record | None = None
    made: list[dict[str, Any]] = []

    def new_id() -> str:
        return f"replay-turn-{next(counter):08d}"

    async def feed(event: core.Event, now: int) -> None:
        nonlocal record
        pending: list[core.Event] = [event]
        steps = 0
        while pending:
            steps += 1
            if steps > MAX_TURNS_PER_MESSAGE:
                raise ReplayError(f"{session}: more than {MAX_TURNS_PER_MESSAGE} turns for one "
                                  "event in replay: the new code loops")
            ev = pending.pop(0)
            out: Outcome = core.step(record, session, ev, now, new_id, cfg)
            if not out.changed:
                continue
            made.extend(history.decode_entries(history.entries(record, ev, out, now)))
            record = out.record
            for effect in out.effects:
                if effect.kind != "dispatch":
                    continue
                service = by_queue.get(effect.queue)
                assert effect.turn is not None
                if service is None:
                    pending.append(Undeliverable(effect.turn, effect.attempt))
                    continue
                dispatch = wire.Dispatch.from_wire(wire.decode(effect.body))
                reply = await service.handle(dispatch)
                try:  # judged as the router judges a reply off the wire
                    checked = wire.Reply.from_wire(wire.decode(wire.encode(reply.to_wire())))
                except wire.BadBody as problem:
                    pending.append(ReplyArrived(effect.turn, None, problem))
                else:
                    pending.append(ReplyArrived(effect.turn, checked))

    for item in items:
        at = int(item.get("at") or 0)
        await feed(Tick(), at)  # timers and held messages due by now fire first
        if item.get("kind") == "client":
            message = wire.ClientMessage.from_wire(item["message"])
            await feed(ClientArrived(message), at)
    return made


async def record(session: str, messages: Sequence[tuple[int, wire.ClientMessage]],
                 services: Sequence[Service], *, root: str,
                 max_depth: int = 32) -> dict[str, Any]:
    """Run client messages (with their times in ms) through ``services`` in memory and return
    the export a router with history on would have recorded: a test case for replay."""
    items = [{"kind": "client", "at": at, "message": m.to_wire()} for at, m in messages]
    made = await _run(session, items, services, RouterConfig(root=root, max_depth=max_depth).core())
    return history.export(session, "cb", made)


async def run(paths: Sequence[str], services: Sequence[Service], *, root: str | None = None,
              ignore_state: bool = False) -> int:
    """``cloudbunch replay``: print each difference; exit code 0 when there is none, else 1."""
    report = await replay_files(paths, services, root=root, ignore_state=ignore_state)
    for difference in report.differences:
        for line in difference.lines():
            print(line)
    verdict = "no differences" if report.ok else f"{len(report.differences)} turn(s) differ"
    what = "state differences accepted; " if ignore_state else ""
    print(f"replayed {report.sessions} session(s), {report.turns} recorded turn(s): "
          f"{what}{verdict}")
    return 0 if report.ok else 1
