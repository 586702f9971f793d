"""The router's pure core: one session record + one event -> new record + effects.

No I/O, no clock, no randomness of its own: time and id generation are arguments. Every rule
of the contract (docs/protocol.md) that concerns a session is a branch here. The shell
(:mod:`router.app`) loads a record, calls :func:`step`, commits the result with its outbox
atomically, then publishes the effects.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

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

    __slots__ = ("_packed", "_state", "service", "timer")

    def __init__(self, service: str, state: Any = None, *, packed: bytes | None = None,
                 timer: Timer | None = None) -> None:
        self.service = service
        self._state = _LAZY if packed is not None else state
        self._packed = packed
        self.timer = timer

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
        other = Frame(self.service, timer=self.timer)
        other._state, other._packed = self._state, self._packed
        return other

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Frame) and self.service == other.service
                and self.state == other.state and self.timer == other.timer)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Frame({self.service!r}, {self.state!r}, timer={self.timer!r})"


@dataclass(frozen=True, slots=True)
class Timer:
    """A frame's idle timer: fires after ``seconds`` of session silence (contract "Idle timers")."""

    seconds: int | float
    set_ms: int
    """When the reply that set it was applied; silence counts from this or the session's last
    accepted client message, whichever is later."""
    token: str
    """The id of the turn whose reply set it: a queued firing finds its timer by this."""
    fired: bool = False

    def due_ms(self, last_client_ms: int) -> int:
        """When it fires: never early, so the milliseconds are rounded up."""
        return max(self.set_ms, last_client_ms) + math.ceil(self.seconds * 1000)


@dataclass(frozen=True, slots=True)
class IdleFired:
    """A fired timer waiting in the session's FIFO for its turn."""

    depth: int
    token: str
    seconds: int | float
    accepted: int
    """The session's count of accepted client messages when it fired: one more, and it is
    dropped."""


@dataclass(slots=True)
class Chain:
    """The client message whose chain is running: where its notices go."""

    origin: str
    reply_to: str
    payload: Any = None
    meta: dict[str, Any] | None = None
    trace: wire.Trace | None = None
    """The message's trace headers, copied onto every dispatch and notice of the chain."""


@dataclass(slots=True)
class Turn:
    """The turn in flight: one dispatch (and its re-dispatches) awaiting one reply."""

    id: str
    depth: int
    event: Literal["start", "message", "result", "idle"]
    attempt: int
    deadline_ms: int
    source: wire.Dispatch | dict[str, Any] = field(compare=False)
    """The first attempt's dispatch (later attempts re-send it with their number), or its
    stored form until :attr:`dispatch` is first read: most steps never need it."""
    opened_by: Literal["open", "replace"] | None = None
    """Set on the first start of a frame pushed by open/replace: a missing queue refuses."""
    replaced: Frame | None = None
    """The frame a ``replace`` popped, restored if the replacement is refused."""

    @property
    def dispatch(self) -> wire.Dispatch:
        if isinstance(self.source, dict):
            try:
                self.source = _dispatch_from_map(self.source)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise CorruptRecord(f"the turn's dispatch: {type(exc).__name__}: {exc}") from None
        return self.source

    def stored_dispatch(self) -> dict[str, Any]:
        return self.source if isinstance(self.source, dict) else _dispatch_to_map(self.source)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Turn) and self.id == other.id and self.depth == other.depth
                and self.event == other.event and self.attempt == other.attempt
                and self.deadline_ms == other.deadline_ms and self.opened_by == other.opened_by
                and self.replaced == other.replaced and self.dispatch == other.dispatch)

    __hash__ = None  # type: ignore[assignment]


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
    waiting: list[ClientMessage | IdleFired] = field(default_factory=list)
    """Client messages and fired timers waiting for the chain in flight, in order."""
    held: list[Held] = field(default_factory=list)
    last_seq: int = 0
    activity_ms: int = 0
    stamp_ms: int = 0
    """When the record (and so its outbox) was last written."""
    last: Chain | None = None
    """The last accepted client message: where an idle chain's notices go, and its meta."""
    last_client_ms: int = 0
    """When the last client message was accepted (the session's silence starts there)."""
    accepted: int = 0
    """How many client messages the session accepted (tells a fired timer it is stale)."""

    def timers_due(self) -> list[tuple[int, int]]:
        """``(due_ms, depth)`` of every timer that has not fired yet, lowest frame first."""
        return [(f.timer.due_ms(self.last_client_ms), depth)
                for depth, f in enumerate(self.stack)
                if f.timer is not None and not f.timer.fired]

    def due_ms(self, cfg: CoreConfig) -> int | None:
        """When this record next needs a deadline event, if ever."""
        dues = [h.arrived_ms + cfg.seq_hold_ms for h in self.held]
        if self.turn is not None:
            dues.append(self.turn.deadline_ms)
        dues.extend(due for due, _ in self.timers_due())
        return min(dues) if dues else None

    def expire_at_ms(self, cfg: CoreConfig) -> int:
        """When the session's keys may vanish (guarantee 7)."""
        due = self.due_ms(cfg)
        base = self.activity_ms if due is None else max(self.activity_ms, due)
        return base + cfg.session_ttl_ms

    def copy(self) -> Record:
        """A copy the core may change. Frames, states and payloads are shared: the core
        replaces them, never changes them in place (a frame it changes is first replaced by
        its own copy, :meth:`_Step.own`), so a deep stack costs nothing to copy."""
        turn = self.turn
        return Record(
            session=self.session,
            stack=list(self.stack),
            turn=None if turn is None else dataclasses.replace(turn),
            chain=self.chain, waiting=list(self.waiting), held=list(self.held),
            last_seq=self.last_seq, activity_ms=self.activity_ms, stamp_ms=self.stamp_ms,
            last=self.last, last_client_ms=self.last_client_ms, accepted=self.accepted)

    # -- encoding (stored in the session store as one msgpack blob)

    def encode(self) -> bytes:
        """The stored form: one keyed msgpack map, version :data:`RECORD_VERSION`."""
        return wire.encode(_record_to_map(self))

    @classmethod
    def decode(cls, blob: bytes) -> Record:
        """Read a stored record; raise :class:`CorruptRecord` if it is not one."""
        try:
            raw = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptRecord(f"not msgpack: {exc}") from None
        if not isinstance(raw, dict):
            raise CorruptRecord(f"a {type(raw).__name__}, not a map")
        version = raw.get("V", 1)
        try:
            if version == RECORD_VERSION:
                return _record_from_map(raw)
            if version == 1:
                return _record_from_v1(raw)
        except CorruptRecord:
            raise
        except (KeyError, IndexError, TypeError, ValueError, AttributeError,
                wire.BadBody) as exc:
            raise CorruptRecord(f"{type(exc).__name__}: {exc}") from None
        raise CorruptRecord(f"unknown record version {version!r}")


class CorruptRecord(Exception):
    """A stored session record that this router cannot read (damaged, or of an unknown
    version): the session cannot be stepped until an operator removes it."""


RECORD_VERSION: Final = 2
"""The stored record's layout: 2 is keyed (``V`` 2); 1 was positional (read, never written)."""


def _frame_to_map(frame: Frame) -> dict[str, Any]:
    timer = frame.timer
    if timer is None:
        return {"n": frame.service, "s": frame.packed()}
    return {"n": frame.service, "s": frame.packed(),
            "i": {"n": timer.seconds, "at": timer.set_ms, "t": timer.token, "f": timer.fired}}


def _frame_from_map(raw: dict[str, Any]) -> Frame:
    timer = raw.get("i")
    return Frame(raw["n"], packed=raw["s"], timer=None if timer is None else Timer(
        timer["n"], timer["at"], timer["t"], timer["f"]))


def _chain_to_map(chain: Chain | None) -> dict[str, Any] | None:
    if chain is None:
        return None
    out = {"o": chain.origin, "r": chain.reply_to, "p": chain.payload, "m": chain.meta}
    if chain.trace:
        out["x"] = chain.trace
    return out


def _chain_from_map(raw: Any) -> Chain | None:
    return None if raw is None else Chain(raw["o"], raw["r"], raw["p"], raw["m"],
                                          raw.get("x"))


def _dispatch_to_map(d: wire.Dispatch) -> dict[str, Any]:
    result = d.result
    return {"s": d.session, "t": d.turn, "e": d.event, "d": d.depth, "st": d.state,
            "ar": d.args, "p": d.payload, "b": d.bubbled, "m": d.meta,
            "r": None if result is None else [
                result.service, result.ok, result.value,
                None if result.error is None else [result.error.code, result.error.message]]}


def _dispatch_from_map(raw: dict[str, Any]) -> wire.Dispatch:
    r = raw["r"]
    result = None if r is None else Result(
        r[0], r[1], r[2], None if r[3] is None else ErrorInfo(r[3][0], r[3][1]))
    return wire.Dispatch(raw["s"], raw["t"], raw["e"], raw["d"], 1, raw["st"], raw["ar"],
                         raw["p"], raw["b"], result, raw["m"])


def _message_to_map(m: ClientMessage) -> dict[str, Any]:
    out = {"s": m.session, "i": m.id, "r": m.reply_to, "y": m.type, "p": m.payload,
           "q": m.seq, "e": m.entry, "m": m.meta}
    if m.trace:
        out["x"] = m.trace
    return out


def _message_from_map(raw: dict[str, Any]) -> ClientMessage:
    return ClientMessage(raw["s"], raw["i"], raw["r"], raw["y"], raw["p"], raw["q"], raw["e"],
                         raw["m"], raw.get("x"))


def _record_to_map(rec: Record) -> dict[str, Any]:
    turn = rec.turn
    return {
        "V": RECORD_VERSION,
        "s": rec.session,
        "k": [_frame_to_map(f) for f in rec.stack],
        "t": None if turn is None else {
            "id": turn.id, "d": turn.depth, "a": turn.attempt, "dl": turn.deadline_ms,
            "x": turn.stored_dispatch(), "o": turn.opened_by,
            "r": None if turn.replaced is None else _frame_to_map(turn.replaced)},
        "c": _chain_to_map(rec.chain),
        "w": [{"f": {"d": w.depth, "t": w.token, "n": w.seconds, "c": w.accepted}}
              if isinstance(w, IdleFired) else {"m": _message_to_map(w)} for w in rec.waiting],
        "h": [{"m": _message_to_map(h.message), "at": h.arrived_ms} for h in rec.held],
        "q": rec.last_seq,
        "a": rec.activity_ms,
        "m": rec.stamp_ms,
        "l": _chain_to_map(rec.last),
        "lc": rec.last_client_ms,
        "n": rec.accepted,
    }


def _waiting_from_map(raw: dict[str, Any]) -> ClientMessage | IdleFired:
    fired = raw.get("f")
    if fired is not None:
        return IdleFired(fired["d"], fired["t"], fired["n"], fired["c"])
    return _message_from_map(raw["m"])


def _record_from_map(raw: dict[str, Any]) -> Record:
    # Field types are not checked one by one (that would double the cost of every step):
    # a damaged record fails here on its structure, or in the step on a type, and either
    # way the shell contains it.
    if not isinstance(raw["s"], str):
        raise TypeError("the session id is not a string")
    t = raw["t"]
    turn = None
    if t is not None:
        x = t["x"]
        turn = Turn(t["id"], t["d"], x["e"], t["a"], t["dl"], x, t["o"],
                    None if t["r"] is None else _frame_from_map(t["r"]))
    return Record(
        session=raw["s"],
        stack=[_frame_from_map(f) for f in raw["k"]],
        turn=turn,
        chain=_chain_from_map(raw["c"]),
        waiting=[_waiting_from_map(w) for w in raw["w"]],
        held=[Held(_message_from_map(h["m"]), h["at"]) for h in raw["h"]],
        last_seq=raw["q"],
        activity_ms=raw["a"],
        stamp_ms=raw["m"],
        last=_chain_from_map(raw["l"]),
        last_client_ms=raw["lc"],
        accepted=raw["n"],
    )


def _record_from_v1(raw: dict[str, Any]) -> Record:
    """The positional layout written before version 2 (rolling upgrades)."""
    t = raw["t"]
    c = raw["c"]
    turn = None
    if t is not None:
        dispatch = wire.Dispatch.from_wire(dict(t[5], attempt=1))
        turn = Turn(id=t[0], depth=t[1], event=t[2], attempt=t[3], deadline_ms=t[4],
                    source=dispatch, opened_by=t[6],
                    replaced=None if t[7] is None else Frame(t[7][0], packed=t[7][1]))
    return Record(
        session=raw["s"],
        stack=[Frame(s, packed=st) for s, st in raw["k"]],
        turn=turn,
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
    fired: int = 0
    """How many idle timers fired in this step."""


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
        queued = sum(1 for w in rec.waiting if isinstance(w, ClientMessage)) + len(rec.held)
        if msg.type != "end" and self.would_queue(msg) and queued + 1 > self.cfg.max_waiting:
            # Refused, not accepted: the session is unchanged (its silence and expiry
            # included) and the id is not remembered, so the frontend may send it again.
            self.notice(msg.reply_to, msg.id, "error", trace=msg.trace, error=ErrorInfo(
                "busy", f"the session already has {queued} "
                f"messages waiting or held (max-waiting {self.cfg.max_waiting}); send this "
                "one again later"))
            self.out.remember = None
            return
        rec.activity_ms = self.now
        if msg.type == "end":
            self.end_session(msg)
            return
        if msg.seq is None:
            self.accept(msg)
        elif msg.seq <= rec.last_seq + 1:
            self.accept(msg)
            self.release_next_in_line()
        else:
            rec.held.append(Held(msg, self.now))
            rec.held.sort(key=lambda h: h.message.seq or 0)

    def would_queue(self, msg: ClientMessage) -> bool:
        """Whether accepting ``msg`` would make it wait behind a chain or be held."""
        if msg.seq is not None and msg.seq > self.rec.last_seq + 1:
            return True
        return self.rec.chain is not None

    def accept(self, msg: ClientMessage) -> None:
        rec = self.rec
        if msg.seq is not None:
            rec.last_seq = msg.seq
        # The session's silence restarts: every idle timer now counts from here.
        rec.last = Chain(msg.id, msg.reply_to, None, msg.meta, msg.trace)
        rec.last_client_ms = self.now
        rec.accepted += 1
        if rec.chain is None:
            self.start_chain(msg)
        else:
            rec.waiting.append(msg)

    def release_next_in_line(self) -> None:
        rec = self.rec
        while rec.held:
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
        self.notice(msg.reply_to, msg.id, "end", trace=msg.trace)

    # -- chains

    def start_chain(self, msg: ClientMessage) -> None:
        rec = self.rec
        rec.chain = Chain(msg.id, msg.reply_to, msg.payload, msg.meta, msg.trace)
        if not rec.stack:
            rec.stack.append(Frame(self.cfg.root if msg.entry is None else msg.entry))
            self.dispatch(0, "start", payload=msg.payload)
        else:
            self.dispatch(len(rec.stack) - 1, "message", payload=msg.payload)

    def end_chain(self) -> None:
        rec = self.rec
        rec.turn = None
        rec.chain = None
        self.start_waiting()

    def start_waiting(self) -> None:
        """Start the next chain from the FIFO (fired timers that are stale are dropped)."""
        rec = self.rec
        while rec.chain is None and rec.waiting:
            item = rec.waiting.pop(0)
            if isinstance(item, IdleFired):
                self.start_idle(item)
            else:
                self.start_chain(item)

    # -- idle timers

    def fire_timers(self) -> bool:
        """Queue every timer that is due, lowest frame first; start one if nothing runs."""
        rec = self.rec
        due = [depth for at, depth in rec.timers_due() if at <= self.now]
        self.out.fired += len(due)
        for depth in due:
            frame = self.own(depth)
            timer = frame.timer
            assert timer is not None
            frame.timer = dataclasses.replace(timer, fired=True)
            rec.waiting.append(IdleFired(depth, timer.token, timer.seconds, rec.accepted))
        if due and rec.chain is None:
            self.start_waiting()
        return bool(due)

    def start_idle(self, fired: IdleFired) -> None:
        """A fired timer's turn came: dispatch ``idle`` to its frame, unless it is stale."""
        rec = self.rec
        frame = rec.stack[fired.depth] if fired.depth < len(rec.stack) else None
        if (frame is None or frame.timer is None or frame.timer.token != fired.token
                or rec.accepted != fired.accepted or rec.last is None):
            return  # its frame is gone or had a turn, or the person spoke meanwhile
        # A transition of the superstate exits its substates: no dispatches to them.
        del rec.stack[fired.depth + 1:]
        last = rec.last
        rec.chain = Chain(last.origin, last.reply_to, None, last.meta, last.trace)
        self.dispatch(fired.depth, "idle", payload=fired.seconds)

    # -- replies

    def reply(self, ev: ReplyArrived) -> bool:
        rec, turn = self.rec, self.rec.turn
        if turn is None or ev.turn != turn.id:
            return False
        rec.activity_ms = self.now
        reply = ev.reply
        problem = ev.problem
        if reply is not None and reply.action == "pass" and turn.event not in ("message", "idle"):
            problem = wire.BadBody("invalid", f"action 'pass' is only allowed on a message "
                                              f"or idle event, not on {turn.event!r}")
        if reply is None or problem is not None:
            assert problem is not None
            self.dead(ev.raw, problem, ev.source_queue)
            self.fail_frame(turn.depth, ErrorInfo("invalid_reply", problem.detail))
            return True
        chain = rec.chain
        assert chain is not None
        for item in reply.output:
            self.notice(chain.reply_to, chain.origin, "output", payload=item,
                        trace=chain.trace)
        self.apply(reply, turn)
        return True

    def apply(self, reply: Reply, turn: Turn) -> None:
        rec, depth = self.rec, turn.depth
        if reply.action == "reply":
            frame = self.own(depth)
            if reply.state is not ABSENT:
                frame.state = reply.state
            self.set_timer(frame, reply, turn)
            self.end_chain()
            return
        if reply.action == "pass":
            chain = rec.chain
            assert chain is not None
            if depth > 0:
                self.dispatch(depth - 1, "idle" if turn.event == "idle" else "message",
                              payload=turn.dispatch.payload, bubbled=True)
                return
            if turn.event == "message":
                self.notice(chain.reply_to, chain.origin, "unhandled", payload=chain.payload,
                            trace=chain.trace)
            self.end_chain()  # a root passing its idle event ends the chain silently
            return
        # Any other action by a lower frame exits the frames above it first.
        del rec.stack[depth + 1:]
        frame = self.own(depth)
        if reply.action == "open":
            assert reply.service is not None
            if reply.state is not ABSENT:
                frame.state = reply.state
            self.set_timer(frame, reply, turn)
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

    def own(self, depth: int) -> Frame:
        """The frame at ``depth``, made this record's own before the step changes it: the
        record's stack shares its frames with the record it was copied from."""
        frame = self.rec.stack[depth].copy()
        self.rec.stack[depth] = frame
        return frame

    def set_timer(self, frame: Frame, reply: Reply, turn: Turn) -> None:
        """A reply's ``idle`` sets its frame's timer anew (the turn's dispatch dropped the old)."""
        frame.timer = None if reply.idle is None else Timer(reply.idle, self.now, turn.id)

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
            self.notice(chain.reply_to, chain.origin, "end", trace=chain.trace)
            self.end_chain()
        else:
            self.notice(chain.reply_to, chain.origin, "error", error=result.error,
                        trace=chain.trace)
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
        return self.fire_timers() or changed

    # -- effects

    def dispatch(self, depth: int, event: Literal["start", "message", "result", "idle"], *,
                 payload: Any = None, args: Any = None, bubbled: bool = False,
                 result: Result | None = None, opened_by: Literal["open", "replace"] | None = None,
                 replaced: Frame | None = None) -> None:
        rec = self.rec
        chain = rec.chain
        assert chain is not None
        frame = self.own(depth)
        frame.timer = None  # a timer lasts until its frame's next turn
        turn_id = self.new_id()
        dispatch = wire.Dispatch(rec.session, turn_id, event, depth, 1, frame.state, args,
                                 payload, bubbled, result, chain.meta)
        rec.turn = Turn(turn_id, depth, event, 1, self.now + self.cfg.turn_timeout_ms, dispatch,
                        opened_by, replaced)
        self.publish_dispatch(rec.turn)

    def publish_dispatch(self, turn: Turn) -> None:
        body = turn.dispatch.to_wire()
        body["attempt"] = turn.attempt
        service = self.rec.stack[turn.depth].service
        chain = self.rec.chain
        trace = chain.trace if chain is not None else None
        self.out.effects.append(Effect(
            "dispatch", wire.service_queue(self.cfg.namespace, service),
            f"{turn.id}.{turn.attempt}", wire.encode(body), dict(trace or {}), turn=turn.id,
            attempt=turn.attempt))

    def notice(self, reply_to: str, in_reply_to: str,
               kind: Literal["output", "end", "error", "unhandled"], *, payload: Any = None,
               error: ErrorInfo | None = None, trace: wire.Trace | None = None) -> None:
        notice = wire.Notice(self.rec.session, self.new_id(), in_reply_to, kind, payload, error)
        self.out.effects.append(Effect("notice", reply_to, notice.id,
                                       wire.encode(notice.to_wire()), dict(trace or {})))

    def dead(self, raw: bytes, problem: wire.BadBody, source_queue: str) -> None:
        self.out.effects.append(Effect("dead", f"{self.cfg.namespace}.dead", self.new_id(), raw,
                                       dead_headers(problem, source_queue)))


def dead_headers(problem: wire.BadBody, source_queue: str) -> dict[str, str]:
    """The headers of a dead letter (contract guarantee 8)."""
    return {"x-cb-reason": problem.reason, "x-cb-detail": problem.detail,
            "x-cb-source-queue": source_queue}
