"""The flow the chaos suites drive, as real services and as a model that predicts it.

Four services, three deep: ``top`` (the root) opens ``mid``, ``mid`` opens ``leaf``, and
``leaf`` and ``alt`` replace each other. Every decision is a pure function of the event, the
frame's state and the message text (``"CMD K"``: a command and the message's number), so
:class:`Model` can replay a session's messages and predict every notice and the final stack.

Between them the commands use every action: ``deep`` opens, ``ok`` closes (two frames at
once from a leaf), ``swap`` replaces, ``help`` / ``reset`` / ``noise`` / ``crash`` pass down
(a digression, a transition of a lower frame that discards the frames above, an unhandled
message, a fail of a lower frame), ``oops`` / ``crash`` / ``die`` fail (``die`` at the root:
the session is gone), ``bye`` closes the root (the session ends). A frame's state counts the
turns that saved it and appears in its outputs, so a turn applied twice or lost shows.

Idle timers: in a session whose messages carry ``meta: {"idle": true}`` (a third of them),
every chain that ends with a ``reply`` of the top frame (not a digression) sets that frame's
timer (:data:`IDLE_S`). When it fires, the frame answers ``idle`` with one output
(``"idle: SERVICE nN"``), keeping its state and setting no new timer, so the stack is the same
whether or not the person was silent long enough: the model predicts, per message, the one
idle notice that may follow its chain, and the last message's one must arrive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any

from worker_sdk import Context, Service

ROOT = "top"
SERVICES = ("top", "mid", "leaf", "alt")
COMMANDS: dict[str, float] = {
    # command: weight in a session's script (deep and swap keep stacks high for the others)
    "deep": 4.0, "ok": 2.0, "swap": 2.0, "oops": 1.0, "help": 2.0, "reset": 1.0,
    "crash": 1.0, "noise": 1.0, "bye": 0.5, "die": 0.5,
}
IDLE_S = float(os.environ.get("CHAOS_IDLE", "4"))
"""Seconds of silence after which a timer session's top frame gets ``idle``."""
SLEEP = float(os.environ.get("CHAOS_SLEEP", "0.005"))
"""Longest simulated work per turn, in seconds (a random fraction of it is slept)."""

_KEEP: Any = object()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Act:
    """One service decision: an action of the contract and its fields."""

    action: str
    output: tuple[str, ...] = ()
    state: Any = _KEEP
    service: str | None = None
    args: Any = None
    result: Any = None
    error: str | None = None
    idle: float | None = None


def text(cmd: str, k: int) -> str:
    """The client payload of message ``k`` carrying ``cmd``."""
    return f"{cmd} {k}"


def _parse(payload: Any) -> tuple[str, str]:
    cmd, _, k = str(payload).partition(" ")
    return cmd, k


def decide(service: str, event: str, state: Any, *, payload: Any = None, args: Any = None,
           bubbled: bool = False, ok: bool = True, value: Any = None,
           code: str | None = None, timer: bool = False) -> Act:
    """What ``service`` answers to one dispatch (the whole behaviour of the flow); with
    ``timer``, a reply of the top frame sets its idle timer."""
    act = _decide(service, event, state, payload=payload, args=args, bubbled=bubbled, ok=ok,
                  value=value, code=code)
    if timer and act.action == "reply" and not bubbled and event != "idle":
        return dataclasses.replace(act, idle=IDLE_S)
    return act


def idle_output(service: str, state: Any) -> str:
    """What a frame says when its idle timer fires."""
    return f"idle: {service} n{state if isinstance(state, int) else 0}"


def _decide(service: str, event: str, state: Any, *, payload: Any, args: Any,
            bubbled: bool, ok: bool, value: Any, code: str | None) -> Act:
    if event == "idle":
        return Act("reply", (idle_output(service, state),))
    n = state if isinstance(state, int) else 0
    if service == "top":
        if event == "result":
            said = f"top got {value}" if ok else f"top caught {code}"
            return Act("reply", (f"{said} n{n + 1}",), state=n + 1)
        if event == "start" and payload is None:
            return Act("reply", ("top ready",), state=0)
        cmd, k = _parse(payload)
        if bubbled:
            if cmd == "help":
                return Act("reply", (f"top help {k} n{n + 1}",), state=n + 1)
            if cmd == "reset":
                return Act("open", (f"top reset {k}",), state=n + 1, service="mid", args=k)
            return Act("pass")
        if cmd == "deep":
            return Act("open", state=n + 1, service="mid", args=k)
        if cmd == "bye":
            return Act("close", (f"top bye {k} n{n}",), result=n)
        if cmd == "die":
            return Act("fail", error="died")
        if cmd == "noise" and event == "message":  # pass is not allowed on start
            return Act("pass")
        return Act("reply", (f"top {cmd} {k} n{n + 1}",), state=n + 1)
    if service == "mid":
        if event == "start":
            return Act("open", state=1, service="leaf", args=args)
        if event == "result":
            if ok:
                return Act("close", result=f"{value}+mid{n}")
            return Act("reply", (f"mid caught {code} n{n + 1}",), state=n + 1)
        cmd, k = _parse(payload)
        if cmd == "crash":
            return Act("fail", (f"mid crash {k}",), error="crashed")
        if cmd == "ok":
            return Act("close", result=f"mid{n}")
        if cmd in ("help", "reset", "noise"):
            return Act("pass")
        if cmd == "deep":
            return Act("open", state=n + 1, service="leaf", args=k)
        return Act("reply", (f"mid {cmd} {k} n{n + 1}",), state=n + 1)
    if service in ("leaf", "alt"):
        other = "alt" if service == "leaf" else "leaf"
        if event == "start":
            return Act("reply", (f"{service} start {args} n1",), state=1)
        if event == "result":  # never opens a child: cannot happen
            return Act("fail", error="unexpected_result")
        cmd, k = _parse(payload)
        if cmd == "ok":
            return Act("close", result=f"{service}{n}")
        if cmd == "swap":
            return Act("replace", (f"{service} swap {k}",), service=other, args=k)
        if cmd == "oops":
            return Act("fail", error=f"{service}-oops")
        if cmd in ("help", "reset", "noise", "crash"):
            return Act("pass")
        return Act("reply", (f"{service} {cmd} {k} n{n + 1}",), state=n + 1)
    raise ValueError(f"unknown service {service!r}")


# ---------------------------------------------------------------------------- services


def _service(name: str) -> Service:
    svc = Service(name)

    async def handle(ctx: Context) -> None:
        if ctx.attempt > 1:  # counted by the chaos test
            log.info("event=chaos_redispatch session=%s turn=%s attempt=%d", ctx.session,
                     ctx.turn, ctx.attempt)
        if SLEEP:
            await asyncio.sleep(random.uniform(0, SLEEP))
        result = ctx.result
        act = decide(name, ctx.event, ctx.state, payload=ctx.payload, args=ctx.args,
                     bubbled=ctx.bubbled, ok=result.ok if result is not None else True,
                     value=result.value if result is not None else None,
                     code=result.error.code if result is not None and result.error else None,
                     timer=bool(ctx.meta.get("idle")))
        ctx.say(*act.output)
        state = {} if act.state is _KEEP else {"state": act.state}
        if act.action == "reply":
            ctx.reply(**state, idle=act.idle)
        elif act.action == "open":
            assert act.service is not None
            ctx.open(act.service, act.args, **state)
        elif act.action == "close":
            ctx.close(act.result)
        elif act.action == "replace":
            assert act.service is not None
            ctx.replace(act.service, act.args)
        elif act.action == "pass":
            ctx.pass_()
        else:
            assert act.error is not None
            ctx.fail(act.error, "chaos flow")

    svc.on_start(handle)
    svc.on_message(handle)
    svc.on_result()(handle)
    svc.on_idle(handle)
    return svc


top = _service("top")
mid = _service("mid")
leaf = _service("leaf")
alt = _service("alt")

SPECS = {name: f"tests.chaos.flow:{name}" for name in SERVICES}
"""``module:attr`` of each service, for ``cloudbunch worker``."""


# ---------------------------------------------------------------------------- the model

Expected = tuple[str, Any]
"""A notice as the model predicts it: (type, payload) for output and unhandled, (type,
error code) for error, ("end", None)."""


@dataclass
class Model:
    """The contract's stack semantics applied to :func:`decide`: one session's truth."""

    stack: list[list[Any]] = field(default_factory=list)
    """[service, state] per frame, root first."""
    actions: dict[str, int] = field(default_factory=dict)
    """How often each action was taken (to show every action occurs)."""
    timer: bool = False
    """Whether the session's messages ask for idle timers (``meta: {"idle": true}``)."""
    idle: Expected | None = None
    """The idle notice that may follow the last message's chain (its top frame's timer)."""

    def message(self, payload: str) -> list[Expected]:
        """Apply one client message; return the notices its chain produces, in order."""
        self.idle = None
        notices: list[Expected] = []
        stack = self.stack
        if not stack:
            stack.append([ROOT, None])
            depth, event, kw = 0, "start", {"payload": payload}
        else:
            depth, event, kw = len(stack) - 1, "message", {"payload": payload}
        while True:
            service, state = stack[depth]
            act = decide(service, event, state, timer=self.timer, **kw)
            self.actions[act.action] = self.actions.get(act.action, 0) + 1
            notices.extend(("output", o) for o in act.output)
            if act.action == "reply":
                if act.state is not _KEEP:
                    stack[depth][1] = act.state
                if act.idle is not None:  # only the top frame sets one
                    self.idle = ("output", idle_output(service, stack[depth][1]))
                return notices
            if act.action == "pass":
                if depth == 0:
                    notices.append(("unhandled", payload))
                    return notices
                depth, event, kw = depth - 1, "message", {"payload": payload, "bubbled": True}
                continue
            del stack[depth + 1:]  # a lower frame's transition exits the frames above
            if act.action == "open":
                if act.state is not _KEEP:
                    stack[depth][1] = act.state
                stack.append([act.service, None])
                depth, event, kw = depth + 1, "start", {"args": act.args}
                continue
            if act.action == "replace":
                stack[depth] = [act.service, None]
                event, kw = "start", {"args": act.args}
                continue
            stack.pop()
            ok = act.action == "close"
            if stack:
                depth, event = len(stack) - 1, "result"
                kw = {"ok": ok, "value": act.result, "code": act.error}
                continue
            notices.append(("end", None) if ok else ("error", act.error))
            return notices

    def frames(self) -> list[tuple[str, Any]]:
        return [(s, st) for s, st in self.stack]


def script(rng: random.Random, count: int) -> list[str]:
    """``count`` payloads drawn with :data:`COMMANDS`' weights."""
    names = list(COMMANDS)
    weights = list(COMMANDS.values())
    return [text(rng.choices(names, weights)[0], k) for k in range(1, count + 1)]
