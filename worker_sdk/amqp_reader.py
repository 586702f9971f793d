"""Reading AMQP frames off the socket in bulk, with the hot path's frames decoded directly.

aiormq reads every frame with three ``readexactly`` calls under a lock into a ``BytesIO``,
then has pamqp decode it field by field. A routed delivery is three frames (``basic.deliver``,
content header, body) and every publish is confirmed by a ``basic.ack``, so that is most of
what a party reads. :class:`BufferedFrameReceiver` reads what the socket has (up to
:data:`READ_SIZE`), cuts as many whole frames out of it as are there, and decodes
``basic.deliver``, ``basic.ack``, content headers (string, octet and flat string-table
properties) and body frames with :mod:`struct`; every other frame (and any the fast path
cannot decode exactly as pamqp would) goes to pamqp, so the frames aiormq gets are the ones
pamqp would have made. ``tests/unit/test_amqp_reader.py`` checks that on
generated frames and on frames cut at every byte.

:func:`install` makes aiormq use it for every connection of the process.
"""

from __future__ import annotations

import asyncio
import struct
from collections import deque
from typing import Any

import aiormq.connection
import pamqp.frame
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

READ_SIZE = 256 * 1024
"""Bytes asked of the socket at once (what is there is returned, up to this)."""

_HEAD = struct.Struct(">BHI")
_METHOD_ID = struct.Struct(">I")
_TAG_AND_BITS = struct.Struct(">qB")  # pamqp reads a long-long as signed
_HEADER_HEAD = struct.Struct(">HHQH")  # class, weight, body size, property flags
_LONG = struct.Struct(">I")
_FRAME_END = 0xCE
_METHOD, _HEADER, _BODY = 1, 2, 3
_DELIVER = 0x003C003C
_ACK = 0x003C0050

Frame = tuple[int, int, Any]
"""(bytes the frame took, channel number, pamqp frame object), as aiormq expects them."""


def _short(data: bytes, at: int) -> tuple[str, int]:
    end = at + 1 + data[at]
    if end > len(data):
        raise IndexError("short string past the frame's end")
    return data[at + 1:end].decode(), end


def _deliver(payload: bytes) -> spec.Basic.Deliver | None:
    """``basic.deliver`` from a method frame's payload (after the method id), or None when
    only pamqp can say what it is (an exchange name pamqp would refuse, and the like)."""
    try:
        consumer_tag, at = _short(payload, 0)
        delivery_tag, bits = _TAG_AND_BITS.unpack_from(payload, at)
        exchange, at = _short(payload, at + _TAG_AND_BITS.size)
        routing_key, at = _short(payload, at)
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    if at != len(payload) or len(exchange) > 127:
        return None
    frame = spec.Basic.Deliver.__new__(spec.Basic.Deliver)
    frame.consumer_tag = consumer_tag
    frame.delivery_tag = delivery_tag
    frame.redelivered = bool(bits & 1)
    frame.exchange = exchange
    frame.routing_key = routing_key
    return frame


def _ack(payload: bytes) -> spec.Basic.Ack | None:
    if len(payload) != _TAG_AND_BITS.size:
        return None
    delivery_tag, bits = _TAG_AND_BITS.unpack(payload)
    return spec.Basic.Ack(delivery_tag, bool(bits & 1))


_PROPERTIES = [(flag, name, getattr(spec.Basic.Properties, "_" + name))
               for name, flag in spec.Basic.Properties.flags.items()]
"""(flag, name, AMQP type) of each basic property, in the order they are encoded."""

_Properties = spec.Basic.Properties


def _table(data: bytes, at: int) -> tuple[dict[str, object], int]:
    """A field table of long-string values (what CloudBunch sends); IndexError for any
    other value type, so the frame goes to pamqp."""
    size = _LONG.unpack_from(data, at)[0]
    at += 4
    end = at + size
    if end > len(data):
        raise IndexError("field table past the frame's end")
    table: dict[str, object] = {}
    while at < end:
        key, at = _short(data, at)
        if at >= end or data[at] != 0x53:  # 'S'
            raise IndexError("a field value other than a long string")
        length = _LONG.unpack_from(data, at + 1)[0]
        raw = data[at + 5:at + 5 + length]
        at += 5 + length
        if at > end:
            raise IndexError("field value past the table's end")
        try:
            table[key] = raw.decode()
        except UnicodeDecodeError:
            table[key] = raw  # as pamqp does
    return table, at


def _header(payload: bytes) -> ContentHeader | None:
    """A content header from its frame's payload, or None for what only pamqp decodes (a
    timestamp, a second flag word, a table value that is not a string)."""
    try:
        class_id, weight, body_size, flags = _HEADER_HEAD.unpack_from(payload, 0)
        if flags & 1:
            return None
        properties = _Properties.__new__(_Properties)
        for _, name, _ in _PROPERTIES:
            setattr(properties, name, None)
        properties.cluster_id = ""
        at = _HEADER_HEAD.size
        value: object
        for flag, name, kind in _PROPERTIES:
            if not flags & flag:
                continue
            if kind == "shortstr":
                value, at = _short(payload, at)
            elif kind == "octet":
                value, at = payload[at], at + 1
            elif kind == "table":
                value, at = _table(payload, at)
            else:
                return None
            setattr(properties, name, value)
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    header = ContentHeader(weight, body_size, properties)
    header.class_id = class_id
    return header


def decode(data: bytes, start: int) -> tuple[list[Frame], int]:
    """The whole frames in ``data`` from ``start`` on, and where the first incomplete one
    begins. Raises InvalidFrameError for bytes that are not a frame."""
    frames: list[Frame] = []
    end = len(data)
    at = start
    while end - at >= 8:  # the smallest frame: a heartbeat, 7 bytes of head and the end
        if data[at] == 0x41 and data[at:at + 4] == b"AMQP":
            # A protocol header: the server refuses the protocol version asked for.
            raise ProtocolSyntaxError("Unexpected AMQP protocol header")
        kind, channel, size = _HEAD.unpack_from(data, at)
        stop = at + 8 + size
        if stop > end:
            break
        if data[stop - 1] != _FRAME_END:
            raise InvalidFrameError(f"AMQP frame without its end byte (type {kind}, "
                                    f"channel {channel}, {size} bytes)")
        value: Any = None
        if kind == _BODY and size:
            value = ContentBody(data[at + 7:stop - 1])
        elif kind == _HEADER and size:
            value = _header(data[at + 7:stop - 1])
        elif kind == _METHOD and size >= 4:
            method = _METHOD_ID.unpack_from(data, at + 7)[0]
            if method == _DELIVER:
                value = _deliver(data[at + 11:stop - 1])
            elif method == _ACK:
                value = _ack(data[at + 11:stop - 1])
        if value is None:
            try:
                _, _, value = pamqp.frame.unmarshal(data[at:stop])
            except PAMQPException as exc:
                raise InvalidFrameError(str(exc)) from exc
        frames.append((stop - at, channel, value))
        at = stop
    return frames, at


class BufferedFrameReceiver(aiormq.connection.FrameReceiver):
    """aiormq's frame receiver, reading in bulk (see the module's docstring)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self._data = b""
        self._at = 0
        self._ready: deque[Frame] = deque()

    async def get_frame(self) -> Any:
        while not self._ready:
            if self._at:
                self._data, self._at = self._data[self._at:], 0
            try:
                chunk = await self.reader.read(READ_SIZE)
            except OSError as exc:  # ConnectionResetError and the like
                raise AMQPConnectionError(f"Server communication error: {exc!r}") from exc
            if not chunk:
                if self._data:
                    raise AMQPConnectionError(
                        "Server connection unexpectedly closed. Read "
                        f"{len(self._data)} bytes of a frame")
                raise StopAsyncIteration
            self._data += chunk
            frames, self._at = decode(self._data, 0)
            self._ready.extend(frames)
        return self._ready.popleft()


def install() -> None:
    """Make aiormq read every connection of this process with :class:`BufferedFrameReceiver`
    (aiormq builds one per connection, by this module-level name)."""
    aiormq.connection.FrameReceiver = BufferedFrameReceiver  # type: ignore[misc]
