"""The router's pure core: one session record + one event -> new record + effects.

No I/O, no clock, no randomness of its own: time and id generation are arguments. Every rule
of the contract (docs/protocol.md) that concerns a session is a branch here. The shell
(:mod:`router.app`) loads a record, calls :func:`step`, commits the result with its outbox
atomically, then publishes the effects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from worker_sdk import wire
from worker_sdk.wire import ABSENT, ClientMessage, ErrorInfo, Reply, Result

IdFactory = Callable[[], str]


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """The settings the core obeys (times in milliseconds); declared, with their defaults,
    in ``router.config.RouterConfig``, which builds this with :meth:`RouterConfig.core`."""

    root: str
    namespace: str
    turn_timeout_ms: int
    max_attempts: int
    max_depth: int
    session_ttl_ms: int
    seq_hold_ms: int
    max_waiting: int
    """Client messages a session may hold waiting or held; the excess gets an error notice."""


# ---------------------------------------------------------------------------- record


_LAZY: Any = object()


class Frame:
    """One open service on the stack and its saved state.

    The state is kept encoded as it was stored, and decoded only when read: a step touches
    one or two frames, so a deep stack costs little more than a shallow one.
    """

    __slots__ = ("_packed", "_state", "service")

    def __init__(self, service: str, state: Any = None, *, packed: bytes | None = None) -> None:
        self.service = service
        self._state = _LAZY if packed is not None else state
        self._packed = packed

    @property
    def state(self) -> Any:
        if self._state is _LAZY:
            assert self._packed is not None
            self._state = wire.decode_stored(self._packed)
        return self._state

    @state.setter
    def state(self, value: Any) -> None:
        self._state = value
        self._packed = None

    def packed(self) -> bytes:
        """The state, encoded (once)."""
        if self._packed is None:
            self._packed = wire.encode(self._state)
        return self._packed

    def copy(self) -> Frame:
        other = Frame(self.service)
        other._state, other._packed = self._state, self._packed
        return other

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Frame) and self.service == other.service
                and self.state == other.state)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Frame({self.service!r}, {self.state!r})"


@dataclass(slots=True)
class Chain:
    """The client message whose chain is running: where its notices go."""

    origin: str
    reply_to: str
    payload: Any = None
    meta: dict[str, Any] | None = None


@dataclass(slots=True)
class Turn:
    """The turn in flight: one dispatch (and its re-dispatches) awaiting one reply."""

    id: str
    depth: int
    event: Literal["start", "message", "result"]
    attempt: int
    deadline_ms: int
    body: dict[str, Any]
    """The dispatch body without ``attempt``, re-sent unchanged on a deadline."""
    opened_by: Literal["open", "replace"] | None = None
    """Set on the first start of a frame pushed by open/replace: a missing queue refuses."""
    replaced: Frame | None = None
    """The frame a ``replace`` popped, restored if the replacement is refused."""


@dataclass(slots=True)
class Held:
    """A client message waiting for its ``seq`` turn, since ``arrived_ms``."""

    message: ClientMessage
    arrived_ms: int


@dataclass(slots=True)
class Record:
    """Everything the router knows about one session."""

    session: str
    stack: list[Frame] = field(default_factory=list)
    turn: Turn | None = None
    chain: Chain | None = None
    waiting: list[ClientMessage] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)
    last_seq: int = 0
    activity_ms: int = 0
    stamp_ms: int = 0
    """When the record (and so its outbox) was last written."""

    def due_ms(self, cfg: CoreConfig) -> int | None:
        """When this record next needs a deadline event, if ever."""
        dues = [h.arrived_ms + cfg.seq_hold_ms for h in self.held]
        if self.turn is not None:
            dues.append(self.turn.deadline_ms)
        return min(dues) if dues else None

    def expire_at_ms(self, cfg: CoreConfig) -> int:
        """When the session's keys may vanish (guarantee 7)."""
        due = self.due_ms(cfg)
        base = self.activity_ms if due is None else max(self.activity_ms, due)
        return base + cfg.session_ttl_ms

    def copy(self) -> Record:
        """A copy the core may change. States and payloads are shared: the core replaces
        them, never changes them in place (and a deep copy could exhaust the stack)."""
        turn = self.turn
        return Record(
            session=self.session,
            stack=[f.copy() for f in self.stack],
            turn=None if turn is None else Turn(
                turn.id, turn.depth, turn.event, turn.attempt, turn.deadline_ms, turn.body,
                turn.opened_by, turn.replaced),
            chain=self.chain, waiting=list(self.waiting), held=list(self.held),
            last_seq=self.last_seq, activity_ms=self.activity_ms, stamp_ms=self.stamp_ms)

    # -- encoding (stored in the session store as one msgpack blob)

    def encode(self) -> bytes:
        turn = self.turn
        chain = self.chain
        return wire.encode({
            "s": self.session,
            "k": [[f.service, f.packed()] for f in self.stack],
            "t": None if turn is None else [
                turn.id, turn.depth, turn.event, turn.attempt, turn.deadline_ms, turn.body,
                turn.opened_by,
                None if turn.replaced is None else [turn.replaced.service,
                                                    turn.replaced.packed()]],
            "c": None if chain is None else [chain.origin, chain.reply_to, chain.payload,
                                               chain.meta],
            "w": [m.to_wire() for m in self.waiting],
            "h": [[h.message.to_wire(), h.arrived_ms] for h in self.held],
            "q": self.last_seq,
            "a": self.activity_ms,
            "m": self.stamp_ms,
        })

    @classmethod
    def decode(cls, blob: bytes) -> Record:
        raw = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        t = raw["t"]
        c = raw["c"]
        return cls(
            session=raw["s"],
            stack=[Frame(s, packed=st) for s, st in raw["k"]],
            turn=None if t is None else Turn(
                id=t[0], depth=t[1], event=t[2], attempt=t[3], deadline_ms=t[4], body=t[5],
                opened_by=t[6], replaced=None if t[7] is None else Frame(t[7][0], packed=t[7][1])),
            chain=None if c is None else Chain(c[0], c[1], c[2], c[3]),
            waiting=[ClientMessage.from_wire(m) for m in raw["w"]],
            held=[Held(ClientMessage.from_wire(m), at) for m, at in raw["h"]],
            last_seq=raw["q"],
            activity_ms=raw["a"],
            stamp_ms=raw.get("m", 0),
        )


# ---------------------------------------------------------------------------- effects


EffectKind = Literal["notice", "dispatch", "dead"]


@dataclass(frozen=True, slots=True)
class Effect:
    """One message to publish. Notices and dead letters go out (confirmed) before dispatches."""

    kind: EffectKind
    queue: str
    message_id: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    turn: str | None = None
    """For dispatches: the turn, so a returned (unroutable) dispatch can be reported back."""
    attempt: int = 0

    def encode(self) -> bytes:
        return wire.encode([self.kind, self.queue, self.message_id, self.body, self.headers,
                            self.turn, self.attempt])

    @classmethod
    def decode(cls, blob: bytes) -> Effect:
        kind, queue, message_id, body, headers, turn, attempt = msgpack.unpackb(blob, raw=False)
        return cls(kind, queue, message_id, body, headers, turn, attempt)


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class ClientArrived:
    """A valid client message from ingress; ``seen`` if its id is in the dedup memory."""

    message: ClientMessage
    seen: bool = False


@dataclass(frozen=True, slots=True)
class ReplyArrived:
    """A reply naming this session and ``turn``; ``reply`` is None when the body is invalid."""

    turn: str
    reply: Reply | None
    problem: wire.BadBody | None = None
    raw: bytes = b""
    source_queue: str = ""


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """The broker returned the dispatch of ``turn``/``attempt``: its queue does not exist."""

    turn: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: fire whatever deadlines are due."""


Event = ClientArrived | ReplyArrived | Undeliverable | Tick


@dataclass(slots=True)
class Outcome:
    """What a step did. ``changed`` False means: nothing to commit."""

    record: Record | None
    effects: list[Effect] = field(default_factory=list)
    changed: bool = False
    remember: str | None = None
    """A client message id to add to the dedup memory."""
    dropped: str | None = None
    """Why an event was dropped without effect (stale reply, duplicate message...)."""


# ---------------------------------------------------------------------------- the step


def step(record: Record | None, session: str, event: Event, now_ms: int, new_id: IdFactory,
         cfg: CoreConfig) -> Outcome:
    """Apply one event to one session. Never mutates ``record``."""
    rec = record.copy() if record is not None else Record(session, activity_ms=now_ms)
    run = _Step(rec, now_ms, new_id, cfg)
    match event:
        case ClientArrived(message, seen):
            if seen:
                return Outcome(record, dropped="duplicate client message id")
            run.out.remember = message.id
            run.client(message)
        case ReplyArrived():
            if not run.reply(event):
                return Outcome(record, dropped="reply for a turn not in flight")
        case Undeliverable(turn, attempt):
            if not run.undeliverable(turn, attempt):
                return Outcome(record, dropped="returned dispatch of a turn not in flight")
        case Tick():
            if not run.tick():
                return Outcome(record)
    rec.stamp_ms = now_ms
    run.out.record = rec
    run.out.changed = True
    return run.out


class _Step:
    """The mutable work of one step on a private copy of the record."""

    def __init__(self, rec: Record, now: int, new_id: IdFactory, cfg: CoreConfig) -> None:
        self.rec = rec
        self.now = now
        self.new_id = new_id
        self.cfg = cfg
        self.out = Outcome(rec)

    # -- client messages, FIFO and seq ordering

    def client(self, msg: ClientMessage) -> None:
        rec = self.rec
        rec.activity_ms = self.now
        if msg.type == "end":
            self.end_session(msg)
            return
        if len(rec.waiting) + len(rec.held) >= self.cfg.max_waiting:
            # invalid_message is the one error code that leaves the session unchanged.
            self.notice(msg.reply_to, msg.id, "error", error=ErrorInfo(
                "invalid_message", f"too many waiting: the session already has "
                f"{self.cfg.max_waiting} messages waiting; this one was not accepted"))
            self.out.remember = None
            return
        if msg.seq is None:
            self.accept(msg)
        elif msg.seq <= rec.last_seq + 1:
            self.accept(msg)
            self.release_next_in_line()
        else:
            rec.held.append(Held(msg, self.now))
            rec.held.sort(key=lambda h: h.message.seq or 0)

    def accept(self, msg: ClientMessage) -> None:
        if msg.seq is not None:
            self.rec.last_seq = msg.seq
        if self.rec.chain is None:
            self.start_chain(msg)
        else:
            self.rec.waiting.append(msg)

    def release_next_in_line(self) -> None:
        rec = self.rec
        while True:
            nxt = next((h for h in rec.held if h.message.seq == rec.last_seq + 1), None)
            if nxt is None:
                return
            rec.held.remove(nxt)
            self.accept(nxt.message)

    def release_expired(self) -> bool:
        rec = self.rec
        expired = [h for h in rec.held if h.arrived_ms + self.cfg.seq_hold_ms <= self.now]
        if not expired:
            return False
        upto = max(h.message.seq or 0 for h in expired)
        for held in [h for h in rec.held if (h.message.seq or 0) <= upto]:
            rec.held.remove(held)
            self.accept(held.message)
        self.release_next_in_line()
        return True

    def end_session(self, msg: ClientMessage) -> None:
        rec = self.rec
        rec.stack.clear()
        rec.waiting.clear()
        rec.held.clear()
        rec.turn = None
        rec.chain = None
        if msg.seq is not None:
            rec.last_seq = msg.seq
        self.notice(msg.reply_to, msg.id, "end")

    # -- chains

    def start_chain(self, msg: ClientMessage) -> None:
        rec = self.rec
        rec.chain = Chain(msg.id, msg.reply_to, msg.payload, msg.meta)
        if not rec.stack:
            rec.stack.append(Frame(msg.entry or self.cfg.root))
            self.dispatch(0, "start", payload=msg.payload)
        else:
            self.dispatch(len(rec.stack) - 1, "message", payload=msg.payload)

    def end_chain(self) -> None:
        rec = self.rec
        rec.turn = None
        rec.chain = None
        if rec.waiting:
            self.start_chain(rec.waiting.pop(0))

    # -- replies

    def reply(self, ev: ReplyArrived) -> bool:
        rec, turn = self.rec, self.rec.turn
        if turn is None or ev.turn != turn.id:
            return False
        rec.activity_ms = self.now
        reply = ev.reply
        problem = ev.problem
        if reply is not None and reply.action == "pass" and turn.event != "message":
            problem = wire.BadBody("invalid", f"action 'pass' is only allowed on a message "
                                              f"event, not on {turn.event!r}")
        if reply is None or problem is not None:
            assert problem is not None
            self.dead(ev.raw, problem, ev.source_queue)
            self.fail_frame(turn.depth, ErrorInfo("invalid_reply", problem.detail))
            return True
        chain = rec.chain
        assert chain is not None
        for item in reply.output:
            self.notice(chain.reply_to, chain.origin, "output", payload=item)
        self.apply(reply, turn)
        return True

    def apply(self, reply: Reply, turn: Turn) -> None:
        rec, depth = self.rec, turn.depth
        if reply.action == "reply":
            if reply.state is not ABSENT:
                rec.stack[depth].state = reply.state
            self.end_chain()
            return
        if reply.action == "pass":
            chain = rec.chain
            assert chain is not None
            if depth == 0:
                self.notice(chain.reply_to, chain.origin, "unhandled", payload=chain.payload)
                self.end_chain()
            else:
                self.dispatch(depth - 1, "message", payload=turn.body.get("payload"),
                              bubbled=True)
            return
        # Any other action by a lower frame exits the frames above it first.
        del rec.stack[depth + 1:]
        frame = rec.stack[depth]
        if reply.action == "open":
            assert reply.service is not None
            if reply.state is not ABSENT:
                frame.state = reply.state
            if depth + 1 >= self.cfg.max_depth:
                self.refuse(depth, reply.service, ErrorInfo(
                    "depth_exceeded", f"opening {reply.service!r} would make "
                    f"{depth + 2} frames; at most {self.cfg.max_depth} are allowed"))
                return
            rec.stack.append(Frame(reply.service))
            self.dispatch(depth + 1, "start", args=reply.args, opened_by="open")
        elif reply.action == "replace":
            assert reply.service is not None
            if reply.state is not ABSENT:
                frame.state = reply.state
            rec.stack[depth] = Frame(reply.service)
            self.dispatch(depth, "start", args=reply.args, opened_by="replace", replaced=frame)
        elif reply.action == "close":
            rec.stack.pop()
            self.finish_frame(Result(frame.service, True, value=reply.result))
        else:  # fail
            assert reply.error is not None
            rec.stack.pop()
            self.finish_frame(Result(frame.service, False, error=reply.error))

    def fail_frame(self, depth: int, error: ErrorInfo) -> None:
        """The frame at ``depth`` fails (router-raised): exits above it, then pops it."""
        rec = self.rec
        del rec.stack[depth + 1:]
        frame = rec.stack.pop()
        self.finish_frame(Result(frame.service, False, error=error))

    def finish_frame(self, result: Result) -> None:
        """A frame ended with ``result``: hand it to the new top, or end the session."""
        rec = self.rec
        chain = rec.chain
        assert chain is not None
        if rec.stack:
            self.dispatch(len(rec.stack) - 1, "result", result=result)
        elif result.ok:
            self.notice(chain.reply_to, chain.origin, "end")
            self.end_chain()
        else:
            self.notice(chain.reply_to, chain.origin, "error", error=result.error)
            self.end_chain()

    def refuse(self, depth: int, service: str, error: ErrorInfo) -> None:
        """An open/replace was refused: the asking frame gets a failed result."""
        self.dispatch(depth, "result", result=Result(service, False, error=error))

    # -- returned dispatches and deadlines

    def undeliverable(self, turn_id: str, attempt: int) -> bool:
        rec, turn = self.rec, self.rec.turn
        if turn is None or turn.id != turn_id or turn.attempt != attempt:
            return False
        service = rec.stack[turn.depth].service
        error = ErrorInfo("unknown_service",
                          f"no queue {wire.service_queue(self.cfg.namespace, service)!r}: "
                          f"no worker of service {service!r} has started")
        if turn.opened_by is not None and turn.attempt == 1:
            if turn.opened_by == "open":
                rec.stack.pop()
            else:
                assert turn.replaced is not None
                rec.stack[turn.depth] = turn.replaced
            self.refuse(len(rec.stack) - 1, service, error)
        else:
            self.fail_frame(turn.depth, error)
        return True

    def tick(self) -> bool:
        changed = self.release_expired()
        turn = self.rec.turn
        if turn is not None and turn.deadline_ms <= self.now:
            changed = True
            if turn.attempt < self.cfg.max_attempts:
                turn.attempt += 1
                turn.deadline_ms = self.now + self.cfg.turn_timeout_ms
                self.publish_dispatch(turn)
            else:
                self.fail_frame(turn.depth, ErrorInfo(
                    "timeout", f"no valid reply from {self.rec.stack[turn.depth].service!r} "
                    f"after {turn.attempt} attempts"))
        return changed

    # -- effects

    def dispatch(self, depth: int, event: Literal["start", "message", "result"], *,
                 payload: Any = None, args: Any = None, bubbled: bool = False,
                 result: Result | None = None, opened_by: Literal["open", "replace"] | None = None,
                 replaced: Frame | None = None) -> None:
        rec = self.rec
        chain = rec.chain
        assert chain is not None
        turn_id = self.new_id()
        body: dict[str, Any] = {"v": wire.VERSION, "session": rec.session, "turn": turn_id,
                                "event": event, "depth": depth, "state": rec.stack[depth].state}
        if args is not None:
            body["args"] = args
        if payload is not None:
            body["payload"] = payload
        if event == "message":
            body["bubbled"] = bubbled
        if result is not None:
            body["result"] = result.to_wire()
        if chain.meta is not None:
            body["meta"] = chain.meta
        rec.turn = Turn(turn_id, depth, event, 1, self.now + self.cfg.turn_timeout_ms, body,
                        opened_by, replaced)
        self.publish_dispatch(rec.turn)

    def publish_dispatch(self, turn: Turn) -> None:
        body = dict(turn.body, attempt=turn.attempt)
        service = self.rec.stack[turn.depth].service
        self.out.effects.append(Effect(
            "dispatch", wire.service_queue(self.cfg.namespace, service),
            f"{turn.id}.{turn.attempt}", wire.encode(body), turn=turn.id, attempt=turn.attempt))

    def notice(self, reply_to: str, in_reply_to: str,
               kind: Literal["output", "end", "error", "unhandled"], *, payload: Any = None,
               error: ErrorInfo | None = None) -> None:
        notice = wire.Notice(self.rec.session, self.new_id(), in_reply_to, kind, payload, error)
        self.out.effects.append(Effect("notice", reply_to, notice.id,
                                       wire.encode(notice.to_wire())))

    def dead(self, raw: bytes, problem: wire.BadBody, source_queue: str) -> None:
        self.out.effects.append(Effect("dead", f"{self.cfg.namespace}.dead", self.new_id(), raw,
                                       dead_headers(problem, source_queue)))


def dead_headers(problem: wire.BadBody, source_queue: str) -> dict[str, str]:
    """The headers of a dead letter (contract guarantee 8)."""
    return {"x-cb-reason": problem.reason, "x-cb-detail": problem.detail,
            "x-cb-source-queue": source_queue}
