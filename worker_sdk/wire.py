"""The wire contract (docs/protocol.md): message types, msgpack encode/decode, validation.

Every party (router, service SDK, frontend client) uses this one module, so a rule of the
contract is written once. Validation raises :class:`BadBody` naming the reason and the field.
"""

from __future__ import annotations

import hashlib
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeGuard

import msgpack

VERSION: Final = 1
CONTENT_TYPE: Final = "application/msgpack"

Trace = dict[str, str]
"""AMQP trace headers (``traceparent``, ``tracestate``) by name."""

MAX_SESSION_LEN: Final = 256
MAX_REPLY_TO: Final = 255
"""Bytes of UTF-8 in a ``reply_to``: an AMQP queue name (a short string) holds no more."""
ACTIONS: Final = frozenset({"reply", "open", "close", "replace", "pass", "fail"})
EVENTS: Final = frozenset({"start", "message", "result", "idle"})
NOTICE_TYPES: Final = frozenset({"output", "end", "error", "unhandled"})
CLIENT_TYPES: Final = frozenset({"message", "end"})
MAX_IDLE: Final = 2_592_000
"""The longest idle timer a reply may set, in seconds (30 days)."""

Reason = Literal["too_large", "undecodable", "invalid"]


class _Absent:
    """Marks a field that was not in the body (as opposed to one that was nil)."""

    _instance: _Absent | None = None

    def __new__(cls) -> _Absent:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ABSENT"

    def __bool__(self) -> bool:
        return False


ABSENT: Final = _Absent()


class BadBody(Exception):
    """A body that breaks the contract; ``reason`` is one of too_large, undecodable, invalid."""

    def __init__(self, reason: Reason, detail: str) -> None:
        detail = _one_line(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------- codec


def encode(obj: Any) -> bytes:
    """Encode one value as msgpack (str as str, bytes as bin)."""
    return msgpack.packb(obj, use_bin_type=True, datetime=False)  # type: ignore[no-any-return]


def decode(body: bytes) -> Any:
    """Decode exactly one msgpack value, or raise ``BadBody('undecodable', ...)``.

    Rejects trailing bytes, invalid UTF-8 strings, map keys that are not strings, timestamp
    extensions of a wrong length and nesting deeper than the decoder's stack (1,024 levels).
    """
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData:
        raise BadBody("undecodable", "trailing bytes after the first msgpack value") from None
    except msgpack.StackError:
        raise BadBody("undecodable", "nesting too deep") from None
    except UnicodeDecodeError:
        raise BadBody("undecodable", "a string is not valid UTF-8") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise BadBody("undecodable", _one_line(f"not msgpack: {exc}" if str(exc) else
                                               "not msgpack")) from None
    problem = _tree_problem(value)
    if problem:
        raise BadBody("undecodable", problem)
    return value


MAX_NESTING: Final = 512
"""Levels of nesting decoded (the body itself is level 1). The contract lets a party choose
between 512 and 2,000; 512 leaves room to embed a decoded value in the router's own records
and dispatches without reaching the encoder's limit."""


def decode_stored(blob: bytes) -> Any:
    """Decode a value this party encoded itself (no contract checks: it passed them)."""
    return msgpack.unpackb(blob, raw=False, strict_map_key=False)


def _tree_problem(value: Any) -> str | None:
    """Why a decoded value breaks the contract: a binary map key, or too deep a nesting."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > MAX_NESTING:
            return f"nesting deeper than {MAX_NESTING} levels"
        if isinstance(item, dict):
            for key, sub in item.items():
                if not isinstance(key, str):
                    return "a map key is not a string"
                if isinstance(sub, (dict, list)):
                    stack.append((sub, level + 1))
        elif isinstance(item, list):
            stack.extend((sub, level + 1) for sub in item if isinstance(sub, (dict, list)))
    return None


_repr = reprlib.Repr()
_repr.maxstring = 40
_repr.maxother = 40
_repr.maxlevel = 3


def _show(value: Any) -> str:
    """A short, safe rendering of a bad value for a one-line detail."""
    return _repr.repr(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]


# ---------------------------------------------------------------------------- field checks


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_map(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BadBody("invalid", f"the body is a {_kind(obj)}, not a map ({what})")
    version = obj.get("v", ABSENT)
    if version is ABSENT:
        raise BadBody("invalid", "required field 'v' is missing")
    if not _is_int(version) or version != VERSION:
        raise BadBody("invalid",
                      f"field 'v' is {_show(version)}; this party speaks version {VERSION}")
    return obj


def _kind(value: Any) -> str:
    names = {dict: "map", list: "array", str: "string", bytes: "binary", bool: "boolean",
             int: "integer", float: "float", type(None): "nil"}
    return names.get(type(value), type(value).__name__)


def _req_str(obj: dict[str, Any], name: str, *, nonempty: bool = True) -> str:
    if name not in obj:
        raise BadBody("invalid", f"required field '{name}' is missing")
    value = obj[name]
    if not isinstance(value, str):
        raise BadBody("invalid", f"field '{name}' must be a string, not {_kind(value)}")
    if nonempty and not value:
        raise BadBody("invalid", f"field '{name}' must not be empty")
    return value


def _opt(obj: dict[str, Any], name: str, types: type | tuple[type, ...], kind: str) -> Any:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        raise BadBody("invalid", f"field '{name}' must be {kind}, not {_kind(value)}")
    return value


def _tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def session_ok(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is a valid session id: a string of 1..256 code points."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_SESSION_LEN


def reply_to_ok(value: Any) -> TypeGuard[str]:
    """Whether ``value`` is a usable ``reply_to``: a string of 1..255 bytes of UTF-8."""
    return isinstance(value, str) and 1 <= len(value.encode("utf-8", "surrogatepass")) \
        <= MAX_REPLY_TO


def _reply_to(obj: dict[str, Any]) -> str:
    value = _req_str(obj, "reply_to")
    if not reply_to_ok(value):
        size = len(value.encode("utf-8", "surrogatepass"))
        raise BadBody("invalid", f"field 'reply_to' is {size} bytes of UTF-8; a queue name "
                                 f"holds at most {MAX_REPLY_TO}")
    return value


def _session(obj: dict[str, Any]) -> str:
    value = _req_str(obj, "session")
    if len(value) > MAX_SESSION_LEN:
        raise BadBody("invalid", f"field 'session' is {len(value)} code points long; "
                                 f"at most {MAX_SESSION_LEN} are allowed")
    return value


# ---------------------------------------------------------------------------- messages


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as carried by ``fail`` replies, ``result`` events and ``error`` notices."""

    code: str
    message: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def from_wire(cls, obj: Any, name: str = "error") -> ErrorInfo:
        if not isinstance(obj, dict):
            raise BadBody("invalid", f"field '{name}' must be a map, not {_kind(obj)}")
        code = obj.get("code", ABSENT)
        if code is ABSENT:
            raise BadBody("invalid", f"field '{name}.code' is missing")
        if not isinstance(code, str):
            raise BadBody("invalid", f"field '{name}.code' must be a string, not {_kind(code)}")
        message = obj.get("message")
        if message is None:
            message = ""
        if not isinstance(message, str):
            raise BadBody("invalid",
                          f"field '{name}.message' must be a string, not {_kind(message)}")
        return cls(code, message)


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A frontend's message to ``NS.ingress``."""

    session: str
    id: str
    reply_to: str
    type: Literal["message", "end"] = "message"
    payload: Any = None
    seq: int | None = None
    entry: str | None = None
    meta: dict[str, Any] | None = None
    trace: Trace | None = field(default=None, compare=False)
    """Trace context from the AMQP headers (not a body field)."""

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"v": VERSION, "type": self.type, "session": self.session,
                                "id": self.id, "reply_to": self.reply_to}
        if self.payload is not None:
            body["payload"] = self.payload
        if self.seq is not None:
            body["seq"] = self.seq
        if self.entry is not None:
            body["entry"] = self.entry
        if self.meta is not None:
            body["meta"] = self.meta
        return body

    @classmethod
    def from_wire(cls, obj: Any) -> ClientMessage:
        body = _check_map(obj, "client message")
        kind = _req_str(body, "type")
        if kind not in CLIENT_TYPES:
            raise BadBody("invalid", f"field 'type' is {_show(kind)}; expected 'message' or 'end'")
        session = _session(body)
        msg_id = _req_str(body, "id")
        reply_to = _reply_to(body)
        seq = _opt(body, "seq", int, "an integer")
        if seq is not None and seq < 1:
            raise BadBody("invalid", f"field 'seq' is {seq}; it must be 1 or more")
        entry = _opt(body, "entry", str, "a string")
        meta = _opt(body, "meta", dict, "a map")
        return cls(session=session, id=msg_id, reply_to=reply_to, type=kind,  # type: ignore[arg-type]
                   payload=body.get("payload"), seq=seq, entry=entry, meta=meta)


@dataclass(frozen=True, slots=True)
class Result:
    """What a ``result`` event reports: how a child frame (or a refused open) ended."""

    service: str
    ok: bool
    value: Any = None
    error: ErrorInfo | None = None

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"service": self.service, "ok": self.ok}
        if self.ok:
            body["value"] = self.value
        else:
            body["error"] = (self.error or ErrorInfo("error")).to_wire()
        return body

    @classmethod
    def from_wire(cls, obj: Any) -> Result:
        if not isinstance(obj, dict):
            raise BadBody("invalid", f"field 'result' must be a map, not {_kind(obj)}")
        service = _req_str(obj, "service", nonempty=False)
        ok = obj.get("ok")
        if not isinstance(ok, bool):
            raise BadBody("invalid", "field 'result.ok' must be a boolean")
        error = None if ok or obj.get("error") is None else ErrorInfo.from_wire(
            obj["error"], "result.error")
        return cls(service=service, ok=ok, value=obj.get("value"), error=error)


@dataclass(frozen=True, slots=True)
class Dispatch:
    """The router's message to ``NS.service.NAME``: one turn for one frame."""

    session: str
    turn: str
    event: Literal["start", "message", "result", "idle"]
    depth: int
    attempt: int = 1
    state: Any = None
    args: Any = None
    payload: Any = None
    bubbled: bool = False
    result: Result | None = None
    meta: dict[str, Any] | None = None
    trace: Trace | None = field(default=None, compare=False)
    """Trace context from the AMQP headers (not a body field); the SDK copies it onto the
    reply."""

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"v": VERSION, "session": self.session, "turn": self.turn,
                                "event": self.event, "depth": self.depth,
                                "attempt": self.attempt, "state": self.state}
        if self.args is not None:
            body["args"] = self.args
        if self.payload is not None:
            body["payload"] = self.payload
        if self.event in ("message", "idle"):
            body["bubbled"] = self.bubbled
        if self.result is not None:
            body["result"] = self.result.to_wire()
        if self.meta is not None:
            body["meta"] = self.meta
        return body

    @classmethod
    def from_wire(cls, obj: Any) -> Dispatch:
        body = _check_map(obj, "dispatch")
        event = _req_str(body, "event")
        if event not in EVENTS:
            raise BadBody("invalid", f"field 'event' is {_show(event)}; expected start, message, "
                                     "result or idle")
        depth: Any = body.get("depth")
        attempt: Any = body.get("attempt")
        if not _is_int(depth) or depth < 0:
            raise BadBody("invalid", "field 'depth' must be an integer >= 0")
        if not _is_int(attempt) or attempt < 1:
            raise BadBody("invalid", "field 'attempt' must be an integer >= 1")
        result = body.get("result")
        return cls(session=_session(body), turn=_req_str(body, "turn"),
                   event=event, depth=depth, attempt=attempt,  # type: ignore[arg-type]
                   state=body.get("state"), args=body.get("args"), payload=body.get("payload"),
                   bubbled=bool(_opt(body, "bubbled", bool, "a boolean")),
                   result=None if result is None else Result.from_wire(result),
                   meta=_opt(body, "meta", dict, "a map"))


@dataclass(frozen=True, slots=True)
class Reply:
    """A service's answer on ``NS.replies``. ``state`` is ABSENT when the body had none."""

    session: str
    turn: str
    action: Literal["reply", "open", "close", "replace", "pass", "fail"]
    state: Any = ABSENT
    output: list[Any] = field(default_factory=list)
    service: str | None = None
    args: Any = None
    result: Any = None
    error: ErrorInfo | None = None
    idle: int | float | None = None
    """``reply``/``open``: seconds of session silence after which this frame gets ``idle``."""

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"v": VERSION, "session": self.session, "turn": self.turn,
                                "action": self.action}
        if self.state is not ABSENT:
            body["state"] = self.state
        if self.output:
            body["output"] = list(self.output)
        if self.service is not None:
            body["service"] = self.service
        if self.args is not None:
            body["args"] = self.args
        if self.result is not None:
            body["result"] = self.result
        if self.error is not None:
            body["error"] = self.error.to_wire()
        if self.idle is not None:
            body["idle"] = self.idle
        return body

    @classmethod
    def from_wire(cls, obj: Any) -> Reply:
        body = _check_map(obj, "reply")
        session = _req_str(body, "session", nonempty=False)
        turn = _req_str(body, "turn", nonempty=False)
        action = _req_str(body, "action")
        if action not in ACTIONS:
            raise BadBody("invalid", f"field 'action' is {_show(action)}; expected one of "
                                     "reply, open, close, replace, pass, fail")
        output = body.get("output")
        if output is None:
            output = []
        elif not isinstance(output, list):
            raise BadBody("invalid", f"field 'output' must be an array, not {_kind(output)}")
        service = None
        if action in ("open", "replace"):
            service = _req_str(body, "service", nonempty=False)
        error = None
        if action == "fail":
            if body.get("error") is None:
                raise BadBody("invalid", "required field 'error' is missing (action 'fail')")
            error = ErrorInfo.from_wire(body["error"])
        idle = _idle(body.get("idle")) if action in ("reply", "open") else None
        return cls(session=session, turn=turn, action=action,  # type: ignore[arg-type]
                   state=body.get("state", ABSENT), output=output, service=service,
                   args=body.get("args"), result=body.get("result"), error=error, idle=idle)


def _idle(value: Any) -> int | float | None:
    """A reply's ``idle``: None for no timer (absent, nil or 0), else seconds in (0, MAX_IDLE]."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise BadBody("invalid", f"field 'idle' must be a number of seconds, not {_kind(value)}")
    if not math.isfinite(value) or not 0 <= value <= MAX_IDLE:
        raise BadBody("invalid", f"field 'idle' is {_show(value)}; it must be 0 (no timer) or "
                                 f"more, up to {MAX_IDLE} seconds")
    return value or None


@dataclass(frozen=True, slots=True)
class Notice:
    """The router's message to a frontend's ``reply_to`` queue."""

    session: str
    id: str
    in_reply_to: str
    type: Literal["output", "end", "error", "unhandled"]
    payload: Any = None
    error: ErrorInfo | None = None
    trace: Trace | None = field(default=None, compare=False)
    """Trace context from the AMQP headers (not a body field)."""

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"v": VERSION, "session": self.session, "id": self.id,
                                "in_reply_to": self.in_reply_to, "type": self.type}
        if self.type in ("output", "unhandled"):
            body["payload"] = self.payload
        if self.error is not None:
            body["error"] = self.error.to_wire()
        return body

    @classmethod
    def from_wire(cls, obj: Any) -> Notice:
        body = _check_map(obj, "notice")
        kind = _req_str(body, "type")
        if kind not in NOTICE_TYPES:
            raise BadBody("invalid", f"field 'type' is {_show(kind)}")
        error = body.get("error")
        return cls(session=_session(body), id=_req_str(body, "id"),
                   in_reply_to=_req_str(body, "in_reply_to", nonempty=False),
                   type=kind, payload=body.get("payload"),  # type: ignore[arg-type]
                   error=None if error is None else ErrorInfo.from_wire(error))


def queue_names(namespace: str) -> dict[str, str]:
    """The shared queue names of a namespace."""
    return {"ingress": f"{namespace}.ingress", "replies": f"{namespace}.replies",
            "dead": f"{namespace}.dead"}


INGRESS_KEY: Final = "ingress"
"""The routing key of client messages on ``NS.x.ingress``."""
REPLIES_KEY: Final = "replies"
"""The routing key of replies on ``NS.x.replies``."""


MAX_PARTITIONS: Final = 256
"""The most ingress partitions a namespace may have (``--partitions``)."""


def partition_of(session: str, partitions: int) -> int:
    """The partition of ``session`` in a namespace of ``partitions`` partitions: the first 8
    bytes of SHA-256 of its UTF-8, big-endian, modulo ``partitions`` (a fixed function, so
    that a party in any language computes the same; docs/scaling.md)."""
    digest = hashlib.sha256(session.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % partitions


def partition_key(kind: str, partition: int) -> str:
    """The routing key of a partition on ``NS.x.ingress`` (``kind`` "ingress") or
    ``NS.x.replies`` ("replies"): ``ingress.3``. Its queue is ``NS.`` + the same."""
    return f"{kind}.{partition}"


def reply_key(reply_to: str | None) -> str:
    """The routing key a service's reply takes on ``NS.x.replies``: the partition's, when
    the dispatch names one in its AMQP ``reply_to`` property (a partitioned namespace),
    else ``replies``. Anything else in the property is ignored."""
    if reply_to is not None and reply_to.startswith("replies."):
        digits = reply_to[8:]
        if 0 < len(digits) <= 3 and digits.isascii() and digits.isdigit() and (
                int(digits) < MAX_PARTITIONS):
            return partition_key(REPLIES_KEY, int(digits))
    return REPLIES_KEY


TRACE_HEADERS: Final = ("traceparent", "tracestate")
"""W3C trace context, carried in AMQP headers (not in bodies)."""
MAX_TRACE_HEADER: Final = 512
"""Characters of a trace header that are passed on; a longer one is dropped (W3C asks that
at least 512 characters of ``tracestate`` be propagated), so no client can make the
router's headers too big for a frame."""

SENT_HEADER: Final = "x-cb-sent-ms"
"""AMQP header the router puts on each dispatch: the wall-clock time it published it, in
milliseconds since the epoch, as a decimal string. A worker's SDK reads it for its queue-wait
metric; any party may ignore it. (The AMQP ``timestamp`` property holds whole seconds only.)"""


def sent_ms(headers: Mapping[str, Any] | None) -> int | None:
    """The publish time in :data:`SENT_HEADER`, or None when it is absent or not a number."""
    value = headers.get(SENT_HEADER) if headers else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and value.isdigit() and len(value) <= 16:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def trace_context(headers: Mapping[str, Any] | None) -> Trace | None:
    """The usable trace headers among AMQP ``headers``: ``traceparent`` and ``tracestate``
    when each is 1..512 characters of printable ASCII; None when there are none."""
    if not headers:
        return None
    found: Trace = {}
    for name in TRACE_HEADERS:
        value = headers.get(name)
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                continue
        if (isinstance(value, str) and 1 <= len(value) <= MAX_TRACE_HEADER
                and value.isascii() and value.isprintable()):
            found[name] = value
    return found or None


def exchange_names(namespace: str) -> dict[str, str]:
    """The exchanges frontends (``ingress``) and services (``replies``) publish to."""
    return {"ingress": f"{namespace}.x.ingress", "replies": f"{namespace}.x.replies"}


def service_queue(namespace: str, service: str) -> str:
    """The queue a service's workers consume."""
    return f"{namespace}.service.{service}"
