"""The AMQP 0-9-1 frames of the hot path, encoded directly (pure; no I/O, no client library).

A publish (``basic.publish``, its content header, its body frames) and an acknowledgement
(``basic.ack``) are most of what a router writes. pamqp builds them from objects, field by
field; here they are packed with :mod:`struct` in one go, for the one shape CloudBunch sends:
a persistent message with a content type, a message id, flat string headers and perhaps a
``reply_to``. Anything
else (another header type, a field too long for a short string) returns None and is left to
the client library. ``tests/unit/test_amqp_frames.py`` checks the bytes against pamqp's.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping

FRAME_END = b"\xce"

_METHOD, _HEADER, _BODY = 1, 2, 3
_BASIC = 60
_PUBLISH, _ACK = 40, 80

# Basic property flags (AMQP 0-9-1, 4.2.6.1: the first property is the highest bit).
_CONTENT_TYPE = 1 << 15
_HEADERS = 1 << 13
_DELIVERY_MODE = 1 << 12
_REPLY_TO = 1 << 9
_MESSAGE_ID = 1 << 7

_EXCHANGE_NAME = re.compile(r"[a-zA-Z0-9\-_.:@#,/+ ]{0,127}")
"""What pamqp lets through as an exchange name (it refuses the rest before sending)."""

_FRAME_HEAD = struct.Struct(">BHI")
_ACK_FRAME = struct.Struct(">BHIHHQBB")
_HEADER_HEAD = struct.Struct(">HHQH")


def ack(channel: int, delivery_tag: int) -> bytes:
    """A ``basic.ack`` frame for one delivery (``multiple`` off)."""
    return _ACK_FRAME.pack(_METHOD, channel, 13, _BASIC, _ACK, delivery_tag, 0, 0xCE)


def _short(text: str) -> bytes | None:
    data = text.encode()
    if len(data) > 255:
        return None
    return bytes((len(data),)) + data


def _table(headers: Mapping[str, object]) -> bytes | None:
    """A field table of string values (type ``S``), or None for any other value."""
    parts = []
    for key, value in sorted(headers.items()):  # pamqp's order
        if not isinstance(value, str):
            return None
        name = _short(key)
        if name is None:
            return None
        data = value.encode()
        parts.append(name + b"S" + len(data).to_bytes(4, "big") + data)
    joined = b"".join(parts)
    return len(joined).to_bytes(4, "big") + joined


def publish(channel: int, exchange: str, routing_key: str, body: bytes, *,
            message_id: str, content_type: str, headers: Mapping[str, object],
            max_content: int, reply_to: str | None = None) -> tuple[bytes, int] | None:
    """The frames of a persistent, mandatory ``basic.publish`` of ``body``, and the size of
    its content header frame's payload (a header must fit in one frame); None when this
    message is not of the shape encoded here. ``max_content`` is what one frame of the
    connection holds (its frame size less 8 bytes of framing): a longer body is split as the
    client library splits it."""
    if not message_id or not content_type:
        return None  # pamqp leaves an empty property out
    if not _EXCHANGE_NAME.fullmatch(exchange):
        return None
    exchange_b, key_b = _short(exchange), _short(routing_key)
    type_b, id_b = _short(content_type), _short(message_id)
    if exchange_b is None or key_b is None or type_b is None or id_b is None:
        return None
    flags = _CONTENT_TYPE | _DELIVERY_MODE | _MESSAGE_ID
    reply_b = b""
    if reply_to:
        short = _short(reply_to)
        if short is None:
            return None
        reply_b = short
        flags |= _REPLY_TO
    table = b""
    if headers:
        encoded = _table(headers)
        if encoded is None:
            return None
        table = encoded
        flags |= _HEADERS
    method = b"".join((struct.pack(">HHH", _BASIC, _PUBLISH, 0), exchange_b, key_b,
                       b"\x01"))  # mandatory on, immediate off
    header = b"".join((_HEADER_HEAD.pack(_BASIC, 0, len(body), flags), type_b, table,
                       b"\x02", reply_b, id_b))  # delivery mode 2: persistent
    frames = [_FRAME_HEAD.pack(_METHOD, channel, len(method)), method, FRAME_END,
              _FRAME_HEAD.pack(_HEADER, channel, len(header)), header, FRAME_END]
    if body:
        if len(body) < max_content:
            frames += (_FRAME_HEAD.pack(_BODY, channel, len(body)), body, FRAME_END)
        else:
            for start in range(0, len(body), max_content):
                chunk = body[start:start + max_content]
                frames += (_FRAME_HEAD.pack(_BODY, channel, len(chunk)), chunk, FRAME_END)
    return b"".join(frames), len(header)
