"""worker_sdk.amqp_reader: the frames it hands aiormq are the ones pamqp makes of the bytes."""

from __future__ import annotations

import asyncio
import struct
from datetime import datetime
from typing import Any

import pamqp.frame
import pytest
from aiormq.exceptions import AMQPConnectionError, InvalidFrameError, ProtocolSyntaxError
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from worker_sdk.amqp_reader import BufferedFrameReceiver, _header, decode

short = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255)
long_short = st.text(min_size=120, max_size=200).filter(lambda s: len(s.encode()) <= 255)
tag = st.integers(-(2**63), 2**63 - 1)

frame_objects = st.one_of(
    st.builds(spec.Basic.Deliver, consumer_tag=short, delivery_tag=tag,
              redelivered=st.booleans(),
              exchange=st.from_regex(r"[a-zA-Z0-9\-_.:]{0,40}", fullmatch=True),
              routing_key=short),
    st.builds(spec.Basic.Ack, delivery_tag=tag, multiple=st.booleans()),
    st.builds(spec.Basic.Nack, delivery_tag=tag, multiple=st.booleans(),
              requeue=st.booleans()),
    st.builds(spec.Basic.Return, reply_code=st.integers(300, 599), reply_text=short,
              exchange=st.just("x"), routing_key=short),
    st.builds(ContentBody, st.binary(min_size=1, max_size=300)),
    st.builds(ContentHeader, body_size=st.integers(0, 2**40), properties=st.builds(
        spec.Basic.Properties,
        content_type=st.none() | short, content_encoding=st.none() | short,
        headers=st.none() | st.dictionaries(short, st.text(max_size=30) | st.binary(
            max_size=8).map(bytearray) | st.integers(-5, 5) | st.booleans(), max_size=4),
        delivery_mode=st.none() | st.integers(1, 2), priority=st.none() | st.integers(0, 9),
        correlation_id=st.none() | short, reply_to=st.none() | short,
        expiration=st.none() | st.from_regex(r"[0-9]{1,6}", fullmatch=True),
        message_id=st.none() | short, message_type=st.none() | short,
        user_id=st.none() | short, app_id=st.none() | short,
        timestamp=st.none() | st.datetimes(min_value=datetime(2000, 1, 1),
                                           max_value=datetime(2100, 1, 1)).map(
            lambda d: d.replace(microsecond=0)))),
    st.builds(Heartbeat),
    st.builds(spec.Channel.Close, reply_code=st.integers(200, 599), reply_text=short,
              class_id=st.integers(0, 90), method_id=st.integers(0, 90)),
)


def _marshal(channel: int, value: Any) -> bytes:
    return pamqp.frame.marshal(value, 0 if isinstance(value, Heartbeat) else channel)


def _pamqp_frames(data: bytes) -> list[tuple[int, int, Any]]:
    frames, at = [], 0
    while at < len(data):
        used, channel, value = pamqp.frame.unmarshal(data[at:])
        frames.append((used, channel, value))
        at += used
    return frames


def _same(ours: list[tuple[int, int, Any]], theirs: list[tuple[int, int, Any]]) -> None:
    assert len(ours) == len(theirs)
    for (used, channel, value), (used2, channel2, value2) in zip(ours, theirs, strict=True):
        assert (used, channel, type(value)) == (used2, channel2, type(value2))
        slots = getattr(value, "__slots__", ())
        assert {s: getattr(value, s, None) for s in slots} == \
            {s: getattr(value2, s, None) for s in slots}
        if isinstance(value, ContentHeader):
            assert vars(value) == vars(value2)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(1, 2047), frame_objects), max_size=8))
def test_frames_decode_as_pamqp_decodes_them(frames: list[tuple[int, Any]]) -> None:
    data = b"".join(_marshal(channel, value) for channel, value in frames)
    decoded, at = decode(data, 0)
    assert at == len(data)
    _same(decoded, _pamqp_frames(data))


@settings(max_examples=100, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(1, 2047), frame_objects), min_size=1,
                       max_size=4), data=st.data())
def test_a_cut_frame_waits_for_the_rest(frames: list[tuple[int, Any]],
                                        data: st.DataObject) -> None:
    whole = b"".join(_marshal(channel, value) for channel, value in frames)
    cut = data.draw(st.integers(0, len(whole)))
    decoded, at = decode(whole[:cut], 0)
    assert at <= cut
    _same(decoded, _pamqp_frames(whole[:at]))
    rest, end = decode(whole, at)
    assert end == len(whole)
    _same(decoded + rest, _pamqp_frames(whole))


def test_a_deliver_pamqp_would_refuse_is_left_to_pamqp() -> None:
    """An exchange name over 127 characters: pamqp decodes it without its length check;
    the fast path hands such a frame to pamqp rather than guess."""
    payload = (struct.pack(">I", spec.Basic.Deliver.index) + b"\x01c" + struct.pack(">QB", 1, 0)
               + bytes([200]) + b"e" * 200 + b"\x01k")
    data = struct.pack(">BHI", 1, 1, len(payload)) + payload + b"\xce"
    _same(decode(data, 0)[0], _pamqp_frames(data))


def test_garbage_is_an_invalid_frame() -> None:
    frame = bytearray(_marshal(1, spec.Basic.Ack(delivery_tag=5)))
    frame[-1] = 0
    with pytest.raises(InvalidFrameError):
        decode(bytes(frame), 0)
    with pytest.raises(ProtocolSyntaxError):
        decode(b"AMQP\x00\x00\x09\x01", 0)


async def _receiver(chunks: list[bytes], eof: bool = True) -> BufferedFrameReceiver:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return BufferedFrameReceiver(reader)


async def test_the_receiver_hands_out_frames_one_by_one_then_stops_at_the_end() -> None:
    data = b"".join(_marshal(1, value) for value in (
        spec.Basic.Deliver(consumer_tag="c", delivery_tag=7, routing_key="q"),
        ContentHeader(body_size=3), ContentBody(b"abc"), spec.Basic.Ack(delivery_tag=9)))
    receiver = await _receiver([data[:5], data[5:30], data[30:]])
    got = [frame async for frame in receiver]
    _same(got, _pamqp_frames(data))


async def test_a_connection_closed_inside_a_frame_is_a_connection_error() -> None:
    data = _marshal(1, ContentBody(b"abcdef"))
    receiver = await _receiver([data[:-2]])
    with pytest.raises(AMQPConnectionError, match="unexpectedly closed"):
        await receiver.get_frame()


def test_the_headers_cloudbunch_sends_take_the_fast_path() -> None:
    properties = spec.Basic.Properties(content_type="application/msgpack", delivery_mode=2,
                                       message_id="m1", headers={"x-session": "s1"})
    data = _marshal(3, ContentHeader(body_size=10, properties=properties))
    assert _header(data[7:-1]) is not None
    _same(decode(data, 0)[0], _pamqp_frames(data))


def test_a_string_header_that_is_not_utf8_stays_bytes_as_pamqp_has_it() -> None:
    table = b"\x01kS" + struct.pack(">I", 2) + b"\xff\xfe"
    payload = (struct.pack(">HHQH", 60, 0, 0, 1 << 13) + struct.pack(">I", len(table))
               + table)
    data = struct.pack(">BHI", 2, 1, len(payload)) + payload + b"\xce"
    decoded = decode(data, 0)[0]
    _same(decoded, _pamqp_frames(data))
    assert decoded[0][2].properties.headers == {"k": b"\xff\xfe"}
