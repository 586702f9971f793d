"""Hostile bodies for the fuzz tests, and an oracle that says what the contract wants done.

The oracle is written from the contract (guarantee 8), not from ``worker_sdk.wire``, so the
two can disagree: ``scan`` is an independent msgpack reader that classifies a body as
undecodable and measures its nesting; ``client_problem`` and friends say whether a decoded
body is a valid message. ``Case`` generators (plain ``random.Random``, seeded) feed the router
run; the hypothesis strategies feed the wire unit tests.
"""

from __future__ import annotations

import math
import random
import secrets
import string
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
from hypothesis import strategies as st

MAX_SESSION = 256
ALWAYS_DECODED = 512
"""Bodies nested this deep or less must decode (the body's map is level 1)."""
NEVER_DECODED = 2000
"""Bodies nested deeper than this must be undecodable."""

_MISSING = object()


def pack(obj: Any) -> bytes:
    """msgpack as every party writes it (str as str, bytes as bin)."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- the oracle


class Undecodable(Exception):
    """The reference reader's verdict: not exactly one acceptable msgpack value."""


_SCALAR_SIZES = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4,
                 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_LEN_SIZES = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xC7: 1, 0xC8: 2, 0xC9: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4,
              0xDC: 2, 0xDD: 4, 0xDE: 2, 0xDF: 4}


def scan(data: bytes) -> int:
    """Read ``data`` as the contract says; return its nesting depth or raise Undecodable.

    Iterative (any depth). Depth counts containers: a top-level map is level 1; scalars add
    nothing. Nesting itself is never an error here: the caller compares the depth against
    ALWAYS_DECODED and NEVER_DECODED.
    """
    pos, end = 0, len(data)

    def take(count: int) -> bytes:
        nonlocal pos
        if pos + count > end:
            raise Undecodable("truncated")
        chunk = data[pos:pos + count]
        pos += count
        return chunk

    def length(size: int) -> int:
        return int.from_bytes(take(size), "big")

    # Each open container: [items still to read, is_map]; a map counts keys and values.
    stack: list[list[Any]] = []
    depth = 0
    while True:
        key_slot = bool(stack) and stack[-1][1] and stack[-1][0] % 2 == 0
        head = take(1)[0]
        is_str = False
        opened: tuple[int, bool] | None = None
        if head <= 0x7F or head >= 0xE0 or head in _SCALAR_SIZES:
            take(_SCALAR_SIZES.get(head, 0))
        elif 0x80 <= head <= 0x8F:
            opened = (head & 0x0F, True)
        elif 0x90 <= head <= 0x9F:
            opened = (head & 0x0F, False)
        elif 0xA0 <= head <= 0xBF or head in (0xD9, 0xDA, 0xDB):
            size = head & 0x1F if head <= 0xBF else length(_LEN_SIZES[head])
            try:
                take(size).decode("utf-8")
            except UnicodeDecodeError:
                raise Undecodable("a string is not UTF-8") from None
            is_str = True
        elif head in (0xC4, 0xC5, 0xC6):
            take(length(_LEN_SIZES[head]))
        elif head in (0xDC, 0xDD):
            opened = (length(_LEN_SIZES[head]), False)
        elif head in (0xDE, 0xDF):
            opened = (length(_LEN_SIZES[head]), True)
        elif head in _FIXEXT or head in (0xC7, 0xC8, 0xC9):
            size = _FIXEXT[head] if head in _FIXEXT else length(_LEN_SIZES[head])
            ext_type = struct.unpack(">b", take(1))[0]
            _check_ext(ext_type, take(size))
        else:  # 0xC1 is never used
            raise Undecodable(f"byte 0x{head:02x} starts no value")
        if key_slot and not is_str:
            raise Undecodable("a map key is not a string")
        if stack:
            stack[-1][0] -= 1
        if opened is not None:
            depth = max(depth, len(stack) + 1)
            count, is_map = opened
            if count:
                stack.append([count * 2 if is_map else count, is_map])
        while stack and stack[-1][0] == 0:
            stack.pop()
        if not stack:
            break
    if pos != end:
        raise Undecodable("trailing bytes")
    return depth


def _check_ext(ext_type: int, data: bytes) -> None:
    if ext_type < -1:
        # Reserved by the msgpack spec for types it has not defined: no value to read. The
        # contract does not list this case; the codec treats it as undecodable, and so do we.
        raise Undecodable(f"reserved extension type {ext_type}")
    if ext_type != -1:
        return
    if len(data) not in (4, 8, 12):
        raise Undecodable(f"timestamp of {len(data)} bytes")
    # msgpack's own spec: nanoseconds above 999,999,999 are not a timestamp.
    if len(data) == 8 and (int.from_bytes(data, "big") >> 34) > 999_999_999:
        raise Undecodable("timestamp nanoseconds out of range")
    if len(data) == 12 and int.from_bytes(data[:4], "big") > 999_999_999:
        raise Undecodable("timestamp nanoseconds out of range")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def session_ok(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_SESSION


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _v_problem(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return "not a map"
    version = obj.get("v", _MISSING)
    if not _is_int(version) or version != 1:
        return "v"
    return None


def client_problem(obj: Any) -> str | None:
    """The field a decoded client message breaks (None when valid), judged from the contract."""
    problem = _v_problem(obj)
    if problem:
        return problem
    checks: list[tuple[str, Callable[[Any], bool]]] = [
        ("type", lambda v: v in ("message", "end") and isinstance(v, str)),
        ("session", session_ok),
        ("id", _nonempty_str),
        ("reply_to", _nonempty_str),
        ("seq", lambda v: v is None or (_is_int(v) and v >= 1)),
        ("entry", lambda v: v is None or isinstance(v, str)),
        ("meta", lambda v: v is None or isinstance(v, dict)),
    ]
    for name, ok in checks:
        if not ok(obj.get(name)):
            return name
    return None


def addressed(obj: Any) -> bool:
    """Whether a bad client message names a session and reply_to (so it gets a notice)."""
    return (isinstance(obj, dict) and session_ok(obj.get("session"))
            and _nonempty_str(obj.get("reply_to")))


def _error_problem(value: Any) -> bool:
    return not (isinstance(value, dict) and isinstance(value.get("code"), str)
                and (value.get("message") is None or isinstance(value.get("message"), str)))


def _idle_ok(value: Any) -> bool:
    """A reply's ``idle``: nil, or a number from 0 to 2,592,000 seconds."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and math.isfinite(value) and 0 <= value <= 2_592_000)


def reply_problem(obj: Any) -> str | None:
    """The field a decoded reply breaks (None when valid)."""
    problem = _v_problem(obj)
    if problem:
        return problem
    action = obj.get("action")
    checks: list[tuple[str, bool]] = [
        ("session", isinstance(obj.get("session"), str)),
        ("turn", isinstance(obj.get("turn"), str)),
        ("action", isinstance(action, str) and action in
         ("reply", "open", "close", "replace", "pass", "fail")),
        ("output", obj.get("output") is None or isinstance(obj.get("output"), list)),
        ("service", action not in ("open", "replace") or isinstance(obj.get("service"), str)),
        ("error", action != "fail" or not _error_problem(obj.get("error"))),
        ("idle", action not in ("reply", "open") or _idle_ok(obj.get("idle"))),
    ]
    for name, ok in checks:
        if not ok:
            return name
    return None


def dispatch_problem(obj: Any) -> str | None:
    """The field a decoded dispatch breaks (None when valid)."""
    problem = _v_problem(obj)
    if problem:
        return problem
    result = obj.get("result")
    checks: list[tuple[str, bool]] = [
        ("session", session_ok(obj.get("session"))),
        ("turn", _nonempty_str(obj.get("turn"))),
        ("event", obj.get("event") in ("start", "message", "result", "idle")
         and isinstance(obj.get("event"), str)),
        ("depth", _is_int(obj.get("depth")) and obj["depth"] >= 0),
        ("attempt", _is_int(obj.get("attempt")) and obj["attempt"] >= 1),
        ("bubbled", obj.get("bubbled") is None or isinstance(obj.get("bubbled"), bool)),
        ("meta", obj.get("meta") is None or isinstance(obj.get("meta"), dict)),
        ("result", result is None or (
            isinstance(result, dict) and isinstance(result.get("service"), str)
            and isinstance(result.get("ok"), bool)
            and (result["ok"] or result.get("error") is None
                 or not _error_problem(result["error"])))),
    ]
    for name, ok in checks:
        if not ok:
            return name
    return None


def notice_problem(obj: Any) -> str | None:
    """The field a decoded notice breaks (None when valid)."""
    problem = _v_problem(obj)
    if problem:
        return problem
    error = obj.get("error")
    checks: list[tuple[str, bool]] = [
        ("session", session_ok(obj.get("session"))),
        ("id", _nonempty_str(obj.get("id"))),
        ("in_reply_to", isinstance(obj.get("in_reply_to"), str)),
        ("type", obj.get("type") in ("output", "end", "error", "unhandled")
         and isinstance(obj.get("type"), str)),
        ("error", error is None or not _error_problem(error)),
    ]
    for name, ok in checks:
        if not ok:
            return name
    return None


@dataclass(frozen=True)
class Verdict:
    """What the contract wants done with one body."""

    reasons: frozenset[str]
    """Acceptable x-cb-reason values; empty when the body must not be dead-lettered."""
    notice: bool = False
    """Ingress: an ``error``/``invalid_message`` notice is due on its reply_to."""
    drop: bool = False
    """Replies: dropped as not in flight (never dead-lettered)."""
    value: Any = None


def _decoded(body: bytes) -> tuple[bool, int, Any]:
    """(decodable, depth, value) by the oracle; value via msgpack when decodable."""
    try:
        depth = scan(body)
    except Undecodable:
        return False, 0, None
    if depth > NEVER_DECODED:
        return False, depth, None
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception:  # deeper than this msgpack build reads: only legal past ALWAYS_DECODED
        assert depth > ALWAYS_DECODED, f"msgpack failed on a {depth}-level body"
        value = None
    return True, depth, value


def ingress_verdict(body: bytes, max_body: int) -> Verdict:
    """What NS.ingress must do with ``body`` (assuming the root service exists)."""
    oversized = len(body) > max_body
    ok, depth, value = _decoded(body)
    if not ok:
        return Verdict(frozenset({"too_large" if oversized else "undecodable"}))
    band = depth > ALWAYS_DECODED
    if band and addressed(value):
        raise ValueError("a body in the optional-decoding band must not be addressed")
    if oversized:
        return Verdict(frozenset({"too_large"}), notice=addressed(value), value=value)
    if client_problem(value) is None and not band:
        return Verdict(frozenset(), value=value)
    reasons = {"invalid", "undecodable"} if band else {"invalid"}
    return Verdict(frozenset(reasons), notice=addressed(value), value=value)


def reply_verdict(body: bytes, max_body: int) -> Verdict:
    """What NS.replies must do with ``body``, whose turn (if any) is never in flight."""
    oversized = len(body) > max_body
    ok, depth, value = _decoded(body)
    if not ok:
        return Verdict(frozenset({"too_large" if oversized else "undecodable"}))
    routable = (isinstance(value, dict) and isinstance(value.get("session"), str)
                and isinstance(value.get("turn"), str))
    if depth > ALWAYS_DECODED:
        if routable:
            raise ValueError("a reply in the optional-decoding band must not be routable")
        return Verdict(frozenset({"too_large"} if oversized else {"invalid", "undecodable"}))
    if routable:
        return Verdict(frozenset(), drop=True, value=value)
    return Verdict(frozenset({"too_large" if oversized else "invalid"}), value=value)


# ---------------------------------------------------------------------------- raw builders


def str_head(size: int) -> bytes:
    """The msgpack header of a string of ``size`` bytes."""
    if size < 32:
        return bytes([0xA0 | size])
    if size < 256:
        return bytes([0xD9, size])
    if size < 65536:
        return b"\xda" + struct.pack(">H", size)
    return b"\xdb" + struct.pack(">I", size)


def map_head(count: int) -> bytes:
    return bytes([0x80 | count]) if count < 16 else b"\xde" + struct.pack(">H", count)


def raw_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """A map from already-encoded keys and values (so keys may repeat or be anything)."""
    return map_head(len(pairs)) + b"".join(k + v for k, v in pairs)


def key(name: str) -> bytes:
    return pack(name)


def nested(levels: int, leaf: bytes = b"\xc0", *, maps: bool = False) -> bytes:
    """``levels`` nested containers (arrays, or maps keyed "k") around ``leaf``."""
    opener = b"\x81\xa1k" if maps else b"\x91"
    return opener * levels + leaf


def with_field(body: dict[str, Any], name: str, raw_value: bytes) -> bytes:
    """``body`` encoded with field ``name`` replaced by an already-encoded value."""
    pairs = [(key(k), pack(v)) for k, v in body.items() if k != name]
    return raw_map([*pairs, (key(name), raw_value)])


BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xc0\xaf"]


def bad_string(rng: random.Random) -> bytes:
    """A msgpack str whose bytes are not UTF-8."""
    raw = rng.choice(BAD_UTF8)
    pad = rng.choice([b"", b"ab", b"x" * 40])
    data = pad + raw + pad[:1]
    return str_head(len(data)) + data


def bad_timestamp(rng: random.Random) -> bytes:
    """A timestamp extension (type -1) whose length is not 4, 8 or 12."""
    size = rng.choice([0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 16, 20])
    data = rng.randbytes(size)
    fixed = {1: 0xD4, 2: 0xD5, 16: 0xD8}
    if size in fixed and rng.random() < 0.5:
        return bytes([fixed[size], 0xFF]) + data
    return bytes([0xC7, size, 0xFF]) + data


def non_string_key(rng: random.Random) -> bytes:
    """An encoded key that is not a string."""
    return rng.choice([pack(1), pack(-7), pack(None), pack(True), pack(1.5), pack(b"bin"),
                       pack([1]), pack({"a": 1}), b"\xc4\x00", pack(2**64 - 1),
                       b"\xd6\xff\x00\x00\x00\x01"])


# ---------------------------------------------------------------------------- random values


PRINTABLE = string.ascii_letters + string.digits + " _-:.{}\\\n\r\t\x00\x85\u2028\u00e9\u4e2d"


def rand_text(rng: random.Random, size: int | None = None) -> str:
    size = rng.randint(0, 12) if size is None else size
    chars = [rng.choice(PRINTABLE) if rng.random() < 0.9 else chr(rng.randint(0x10000, 0x10FFFF))
             for _ in range(size)]
    return "".join(chars)


def rand_scalar(rng: random.Random) -> Any:
    pick = rng.randrange(10)
    if pick == 0:
        return None
    if pick == 1:
        return rng.random() < 0.5
    if pick == 2:
        return rng.choice([0, 1, -1, 2, 255, 2**31, -(2**31), 2**63, 2**64 - 1, -(2**63)])
    if pick == 3:
        return rng.choice([0.0, -0.0, 1.5, 1e308, float("inf"), 1.0])
    if pick == 4:
        return rng.randbytes(rng.randint(0, 8))
    if pick == 5:
        return msgpack.Timestamp(rng.randint(0, 2**34), rng.randint(0, 999_999_999))
    if pick == 6:
        return msgpack.ExtType(rng.randint(0, 127), rng.randbytes(rng.randint(0, 5)))
    return rand_text(rng)


def rand_value(rng: random.Random, depth: int = 3) -> Any:
    """A random msgpack-encodable value (string keys only)."""
    if depth <= 0 or rng.random() < 0.5:
        return rand_scalar(rng)
    if rng.random() < 0.5:
        return [rand_value(rng, depth - 1) for _ in range(rng.randint(0, 4))]
    return {rand_text(rng): rand_value(rng, depth - 1) for _ in range(rng.randint(0, 4))}


def rand_non_map(rng: random.Random) -> Any:
    value = rand_value(rng)
    while isinstance(value, dict):
        value = rand_value(rng)
    return value


# Values that break each client field while a body stays decodable (None = remove the field).
CLIENT_DEFECTS: dict[str, list[Any]] = {
    "v": [_MISSING, 2, 0, -1, "1", True, False, 1.0, None, [1], {"v": 1}, b"\x01", 2**64 - 1],
    "type": [_MISSING, None, "", "msg", "MESSAGE", "end ", 1, True, ["message"], b"message",
             "start", "result", "unknown"],
    "id": [_MISSING, "", None, 5, b"bin", ["x"], True, {"id": "x"}, 1.5],
    "seq": [0, -1, -(2**63), True, False, 1.5, "1", [1], {}, b"\x01"],
    "entry": [5, True, b"x", [], {}, 1.0],
    "meta": ["x", 5, [], True, b"", 0.0],
}
SESSION_DEFECTS: list[Any] = [_MISSING, "", "s" * 257, "\U0001f600" * 257, 5, None, b"bin",
                              ["s"], True]
REPLY_TO_DEFECTS: list[Any] = [_MISSING, "", None, 5, b"q", ["q"], False]
REPLY_DEFECTS: dict[str, list[Any]] = {
    "v": [2, _MISSING, True, 1.0, "1", None],
    "action": [_MISSING, "", "explode", "REPLY", 1, None, True, ["reply"]],
    "output": ["hello", 5, {"a": 1}, True],
    "state": [rand_value(random.Random(1), 4)],
    "idle": [-1, -0.5, 2_592_001, float("inf"), float("nan"), "60", True, [60], {}],
}


def _set(body: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    out = dict(body)
    if value is _MISSING:
        out.pop(name, None)
    else:
        out[name] = value
    return out


# ---------------------------------------------------------------------------- router cases


@dataclass
class Case:
    """One generated body, where it goes and what must become of it."""

    kind: str
    queue: str
    """``ingress`` or ``replies``."""
    body: bytes
    verdict: Verdict
    session: str | None = None
    in_reply_to: str = ""
    echo: Any = None
    """For a valid client message: the payload the echo service must send back."""


def _new_session() -> str:
    return "fz:" + secrets.token_hex(6)


@dataclass
class Generator:
    """Builds router cases of many kinds; every case is checked against the oracle."""

    rng: random.Random
    max_body: int
    reply_to: str
    """The test's own queue: addressed bad client messages name it."""
    real_sessions: list[str] = field(default_factory=list)
    """Sessions with live conversations: bad client messages may name them (unchanged)."""

    # -- ingress

    def client_body(self, session: str | None = None, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"v": 1, "type": "message",
                                "session": session or self.session(),
                                "id": secrets.token_urlsafe(9), "reply_to": self.reply_to,
                                "payload": rand_value(self.rng, 2)}
        if self.rng.random() < 0.3:
            body["meta"] = {"lang": "en", "x": rand_value(self.rng, 1)}
        body.update(extra)
        return body

    def session(self) -> str:
        if self.real_sessions and self.rng.random() < 0.2:
            return self.rng.choice(self.real_sessions)
        return _new_session()

    def ingress(self) -> Case:
        kinds: list[tuple[str, float]] = [
            ("random_bytes", 1), ("non_map", 1), ("random_map", 0.5), ("field_defect", 4),
            ("unaddressed", 1.5), ("oversized_client", 0.5), ("oversized_garbage", 0.3),
            ("trailing", 0.5), ("bad_utf8", 0.5), ("non_string_key", 0.7),
            ("bad_timestamp", 0.4), ("too_deep", 0.3), ("deep_invalid", 0.3),
            ("band_unaddressed", 0.2), ("dup_key_invalid", 0.3), ("dup_key_valid", 0.1),
            ("valid_oddities", 0.1),
        ]
        kind = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        body, echo, _ = getattr(self, f"_in_{kind}")()
        verdict = ingress_verdict(body, self.max_body)
        case = Case(kind, "ingress", body, verdict, echo=echo)
        # Only the valid kinds may be valid: a stray valid `end` would end live sessions.
        assert bool(verdict.reasons) == (echo is None), (kind, body[:100])
        if verdict.notice or echo is not None:
            value = verdict.value
            case.session = value["session"]
            msg_id = value.get("id")
            case.in_reply_to = msg_id if isinstance(msg_id, str) else ""
        return case

    def _in_random_bytes(self) -> tuple[bytes, Any, Any]:
        size = self.rng.choice([0, 1, 2, 5, 20, 100, 1000])
        return self.rng.randbytes(self.rng.randint(0, size)), None, None

    def _in_non_map(self) -> tuple[bytes, Any, Any]:
        return pack(rand_non_map(self.rng)), None, None

    def _in_random_map(self) -> tuple[bytes, Any, Any]:
        value = {rand_text(self.rng): rand_value(self.rng) for _ in range(self.rng.randint(0, 6))}
        if self.rng.random() < 0.5:
            value["v"] = 1
        return pack(value), None, None

    def _in_field_defect(self) -> tuple[bytes, Any, Any]:
        name = self.rng.choice(list(CLIENT_DEFECTS))
        body = self.client_body()
        if name != "type" and self.rng.random() < 0.2:
            body["type"] = "end"
        body = _set(body, name, self.rng.choice(CLIENT_DEFECTS[name]))
        return pack(body), None, None

    def _in_unaddressed(self) -> tuple[bytes, Any, Any]:
        body = self.client_body()
        if self.rng.random() < 0.6:
            body = _set(body, "session", self.rng.choice(SESSION_DEFECTS))
        else:
            body = _set(body, "reply_to", self.rng.choice(REPLY_TO_DEFECTS))
        if self.rng.random() < 0.3:
            name = self.rng.choice(list(CLIENT_DEFECTS))
            body = _set(body, name, self.rng.choice(CLIENT_DEFECTS[name]))
        return pack(body), None, None

    def _in_oversized_client(self) -> tuple[bytes, Any, Any]:
        filler = "x" * (self.max_body + self.rng.randint(1, 3 * self.max_body))
        body = self.client_body(payload=filler)
        if self.rng.random() < 0.3:
            body["v"] = 2
        if self.rng.random() < 0.2:
            body = _set(body, "reply_to", "")
        return pack(body), None, None

    def _in_oversized_garbage(self) -> tuple[bytes, Any, Any]:
        return self.rng.randbytes(self.max_body + self.rng.randint(1, 5000)), None, None

    def _in_trailing(self) -> tuple[bytes, Any, Any]:
        tail = self.rng.choice([b"\x00", b"\xc0", pack({"v": 1}), b"\xc1", self.rng.randbytes(3)])
        return pack(self.client_body()) + tail, None, None

    def _in_bad_utf8(self) -> tuple[bytes, Any, Any]:
        body = self.client_body()
        where = self.rng.choice(["payload", "id", "session", "key", "deep"])
        if where == "key":
            return raw_map([*[(key(k), pack(v)) for k, v in body.items()],
                            (bad_string(self.rng), pack(1))]), None, None
        if where == "deep":
            return with_field(body, "payload", nested(20, bad_string(self.rng))), None, None
        return with_field(body, where, bad_string(self.rng)), None, None

    def _in_non_string_key(self) -> tuple[bytes, Any, Any]:
        body = self.client_body()
        inner = raw_map([(key("a"), pack(1)), (non_string_key(self.rng), pack("x"))])
        where = self.rng.choice(["top", "meta", "deep"])
        if where == "top":
            return raw_map([*[(key(k), pack(v)) for k, v in body.items()],
                            (non_string_key(self.rng), pack(1))]), None, None
        if where == "meta":
            return with_field(body, "meta", inner), None, None
        levels = self.rng.randint(1, 300)
        return with_field(body, "payload", nested(levels, inner, maps=True)), None, None

    def _in_bad_timestamp(self) -> tuple[bytes, Any, Any]:
        stamp = bad_timestamp(self.rng)
        return with_field(self.client_body(), "payload", b"\x92\xc0" + stamp), None, None

    def _in_too_deep(self) -> tuple[bytes, Any, Any]:
        levels = self.rng.choice([NEVER_DECODED, NEVER_DECODED + 1, 2500, 3000])
        return with_field(self.client_body(), "payload", nested(levels,
                                                                maps=self.rng.random() < 0.5)), \
            None, None

    def _in_deep_invalid(self) -> tuple[bytes, Any, Any]:
        # Addressed and invalid, nested to at most ALWAYS_DECODED: decoded, notice due.
        body = _set(self.client_body(), "v", self.rng.choice([2, "1", None]))
        levels = self.rng.randint(100, ALWAYS_DECODED - 2)
        return with_field(body, "payload", nested(levels, maps=self.rng.random() < 0.5)), \
            None, None

    def _in_band_unaddressed(self) -> tuple[bytes, Any, Any]:
        body = _set(self.client_body(), "reply_to", _MISSING)
        levels = self.rng.randint(ALWAYS_DECODED, 1000)
        return with_field(body, "payload", nested(levels)), None, None

    def _in_dup_key_invalid(self) -> tuple[bytes, Any, Any]:
        body = self.client_body()
        pairs = [(key(k), pack(v)) for k, v in body.items()]
        name, bad = self.rng.choice([("v", 2), ("type", "nope"), ("id", ""), ("seq", 0)])
        good = pack(body.get(name, 1))
        return raw_map([*pairs[:1], (key(name), good), *pairs[1:], (key(name), pack(bad))]), \
            None, None

    def _in_dup_key_valid(self) -> tuple[bytes, Any, Any]:
        payload = {"dup": secrets.token_hex(4)}
        body = self.client_body(session=_new_session(), payload=payload)
        pairs = [(key(k), pack(v)) for k, v in body.items() if k not in ("v", "type")]
        return raw_map([(key("v"), pack(2)), (key("type"), pack(7)), *pairs,
                        (key("type"), pack("message")), (key("v"), pack(1))]), payload, None

    def _in_valid_oddities(self) -> tuple[bytes, Any, Any]:
        # Valid: a 256-code-point astral session, unknown extra fields, explicit nils.
        payload = {"odd": secrets.token_hex(4)}
        session = "\U0001f600" * (MAX_SESSION - 13) + secrets.token_hex(6) + "!"
        body = self.client_body(session=session, payload=payload, seq=None, entry=None,
                                meta=None, unknown_field={"x": [1, 2]})
        return pack(body), payload, None

    # -- replies

    def reply_body(self, session: str | None = None, turn: str | None = None,
                   **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"v": 1, "session": session or self.session(),
                                "turn": turn or secrets.token_urlsafe(16),
                                "action": self.rng.choice(["reply", "close", "pass"]),
                                "state": rand_value(self.rng, 2), "output": ["forged"]}
        body.update(extra)
        return body

    def reply(self) -> Case:
        kinds: list[tuple[str, float]] = [
            ("random_bytes", 1), ("non_map", 1), ("unroutable", 2), ("undecodable", 1.5),
            ("oversized_unroutable", 0.4), ("oversized_routable", 0.4), ("forged", 2),
            ("forged_defect", 2), ("long_session", 0.2),
        ]
        kind = self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        body = getattr(self, f"_re_{kind}")()
        return Case(kind, "replies", body, reply_verdict(body, self.max_body))

    def _re_random_bytes(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, self.rng.choice([1, 10, 200, 3000])))

    def _re_non_map(self) -> bytes:
        return pack(rand_non_map(self.rng))

    def _re_unroutable(self) -> bytes:
        body = self.reply_body()
        name = self.rng.choice(["session", "turn", "both"])
        bad = self.rng.choice([_MISSING, None, 5, b"bin", ["t"], True, {"s": 1}])
        if name == "both":
            body = _set(_set(body, "session", bad), "turn", bad)
        else:
            body = _set(body, name, bad)
        return pack(body)

    def _re_undecodable(self) -> bytes:
        body = self.reply_body()
        pick = self.rng.randrange(5)
        if pick == 0:
            return pack(body) + b"\xc0"
        if pick == 1:
            return with_field(body, "state", bad_string(self.rng))
        if pick == 2:
            inner = raw_map([(non_string_key(self.rng), pack(1))])
            return with_field(body, "state", nested(self.rng.randint(0, 50), inner))
        if pick == 3:
            return with_field(body, "output", b"\x91" + bad_timestamp(self.rng))
        return with_field(body, "state", nested(self.rng.choice([2001, 2600])))

    def _re_oversized_unroutable(self) -> bytes:
        body = _set(self.reply_body(), "turn", self.rng.choice([_MISSING, 7]))
        body["state"] = "x" * (self.max_body + 10)
        return pack(body)

    def _re_oversized_routable(self) -> bytes:
        body = self.reply_body(state="x" * (self.max_body + self.rng.randint(1, 10_000)))
        if self.rng.random() < 0.3:
            body["v"] = 2
        return pack(body)

    def _re_forged(self) -> bytes:
        action = self.rng.choice(["reply", "open", "close", "replace", "pass", "fail"])
        extra: dict[str, Any] = {"action": action}
        if action in ("open", "replace"):
            extra["service"] = "echo"
        if action == "fail":
            extra["error"] = {"code": "forged"}
        return pack(self.reply_body(**extra))

    def _re_forged_defect(self) -> bytes:
        name = self.rng.choice(list(REPLY_DEFECTS))
        return pack(_set(self.reply_body(), name, self.rng.choice(REPLY_DEFECTS[name])))

    def _re_long_session(self) -> bytes:
        return pack(self.reply_body(session="L" * self.rng.choice([257, 5000]),
                                    turn="t" * self.rng.choice([0, 1, 300])))

    def stale(self, session: str, turn: str) -> Case:
        """A reply for a turn that was already decided: dropped whatever it says."""
        pick = self.rng.randrange(4)
        if pick == 0:
            body = pack(self.reply_body(session, turn, action="fail",
                                        error={"code": "stale"}))
        elif pick == 1:
            body = pack(self.reply_body(session, turn, v=2))
        elif pick == 2:
            body = pack(self.reply_body(session, turn, action="explode"))
        else:
            body = pack(self.reply_body(session, turn, state="x" * (self.max_body + 1)))
        case = Case("stale", "replies", body, reply_verdict(body, self.max_body))
        assert case.verdict.drop
        return case


# ---------------------------------------------------------------------------- hypothesis


def timestamps() -> st.SearchStrategy[msgpack.Timestamp]:
    return st.builds(msgpack.Timestamp, st.integers(-(2**63), 2**63 - 1),
                     st.integers(0, 999_999_999))


def scalars() -> st.SearchStrategy[Any]:
    return (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
            | st.floats(allow_nan=False) | st.text(max_size=40) | st.binary(max_size=20)
            | timestamps()
            | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=8)))


def values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """msgpack values that survive a round trip (string keys, lists, no NaN)."""
    return st.recursive(scalars(), lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=max_leaves)


def any_keyed_values() -> st.SearchStrategy[Any]:
    """Values whose maps may have keys of any type (for undecodable bodies)."""
    keys = (st.text(max_size=4) | st.binary(max_size=4) | st.integers() | st.booleans()
            | st.none() | st.floats(allow_nan=False))
    return st.recursive(scalars(), lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(keys.filter(lambda k: not isinstance(k, int)
                                                      or -(2**63) <= k < 2**64), inner,
                                          max_size=3), max_leaves=15)


def _fragment() -> st.SearchStrategy[bytes]:
    """A piece of a msgpack stream: a header, a whole scalar, or noise."""
    heads = st.sampled_from([b"\x81", b"\x82", b"\x91", b"\x92", b"\x90", b"\x80", b"\xdc\x00\x02",
                             b"\xde\x00\x01", b"\xc1", b"\xa1v", b"\xa1", b"\x01", b"\xc0",
                             b"\xa7session", b"\xa4turn", b"\xa2id", b"\xa8reply_to",
                             b"\xc4\x01a", b"\xd6\xff", b"\xd4\xff\x00", b"\xc7\x03\xff",
                             b"\xa2\xc3\x28", b"\xa1\xff", b"\xd9\x02ab", b"\xcb"])
    return heads | st.builds(pack, scalars()) | st.binary(min_size=1, max_size=3)


def token_streams() -> st.SearchStrategy[bytes]:
    """Byte strings made of msgpack fragments: mostly near-misses of real bodies."""
    return st.lists(_fragment(), max_size=25).map(b"".join)


def session_ids() -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=MAX_SESSION)


def nonempty_text() -> st.SearchStrategy[str]:
    return st.text(min_size=1, max_size=20)


def maps() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.text(max_size=8), values(8), max_size=3)


def wrong_for(kind: str) -> st.SearchStrategy[Any]:
    """Values of any type but ``kind`` (bool counts as wrong for int)."""
    checks: dict[str, Callable[[Any], bool]] = {
        "int": _is_int, "str": lambda v: isinstance(v, str),
        "map": lambda v: isinstance(v, dict), "list": lambda v: isinstance(v, list),
        "bool": lambda v: isinstance(v, bool)}
    return values(6).filter(lambda v: v is not None and not checks[kind](v))
