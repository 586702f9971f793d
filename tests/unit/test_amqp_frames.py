"""worker_sdk.amqp_frames: the hot path's frames are byte for byte what pamqp makes."""

from __future__ import annotations

from aiormq.abc import ChannelFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from worker_sdk import amqp_frames

text = st.text(max_size=40)
short = st.text(max_size=20).filter(lambda s: len(s.encode()) <= 255)
exchange_name = st.from_regex(r"[a-zA-Z0-9\-_.:@#,/+ ]{0,30}", fullmatch=True)


def _pamqp_publish(channel: int, exchange: str, key: str, body: bytes, message_id: str,
                   headers: dict[str, object], frame_max: int,
                   reply_to: str | None = None) -> bytes:
    properties = spec.Basic.Properties(content_type="application/msgpack", delivery_mode=2,
                                       message_id=message_id, headers=headers or None,
                                       reply_to=reply_to or None)
    frames: list[object] = [spec.Basic.Publish(exchange=exchange, routing_key=key,
                                               mandatory=True),
                            ContentHeader(properties=properties, body_size=len(body))]
    room = frame_max - 8
    if body:
        if len(body) < room:
            frames.append(ContentBody(body))
        else:
            frames += [ContentBody(body[i:i + room]) for i in range(0, len(body), room)]
    return ChannelFrame.marshall(channel, frames).payload  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(channel=st.integers(1, 2047), exchange=exchange_name, key=short,
       body=st.binary(max_size=300), message_id=short.filter(bool),
       headers=st.dictionaries(short, text, max_size=4),
       frame_max=st.sampled_from([4096, 131072, 100, 64]),
       reply_to=st.none() | short)
def test_a_publish_is_what_pamqp_makes(channel: int, exchange: str, key: str, body: bytes,
                                       message_id: str, headers: dict[str, object],
                                       frame_max: int, reply_to: str | None) -> None:
    got = amqp_frames.publish(channel, exchange, key, body, message_id=message_id,
                              content_type="application/msgpack", headers=headers,
                              max_content=frame_max - 8, reply_to=reply_to)
    assert got is not None
    frames, header_size = got
    assert frames == _pamqp_publish(channel, exchange, key, body, message_id, headers,
                                    frame_max, reply_to)
    properties = spec.Basic.Properties(content_type="application/msgpack", delivery_mode=2,
                                       message_id=message_id, headers=headers or None,
                                       reply_to=reply_to or None)
    marshalled = ContentHeader(properties=properties, body_size=len(body)).marshal()
    assert header_size == len(marshalled)  # its frame's payload


@given(channel=st.integers(1, 2047), tag=st.integers(1, 2**63 - 1))
def test_an_ack_is_what_pamqp_makes(channel: int, tag: int) -> None:
    expected = ChannelFrame.marshall(channel, [spec.Basic.Ack(delivery_tag=tag)]).payload
    assert amqp_frames.ack(channel, tag) == expected


def test_other_shapes_are_left_to_the_client_library() -> None:
    def encode(**kw: object) -> object:
        args: dict[str, object] = dict(exchange="", routing_key="q", message_id="m",
                                       headers={})
        args.update(kw)
        return amqp_frames.publish(1, args["exchange"], args["routing_key"], b"x",  # type: ignore[arg-type]
                                   message_id=args["message_id"],  # type: ignore[arg-type]
                                   content_type="application/msgpack",
                                   headers=args["headers"], max_content=4088)  # type: ignore[arg-type]
    assert encode() is not None
    assert encode(headers={"n": 1}) is None  # not a string: pamqp picks the type
    assert encode(headers={"t": {"a": "b"}}) is None
    assert encode(routing_key="q" * 256) is None
    assert encode(message_id="é" * 128) is None  # 256 bytes
    assert encode(headers={"k" * 256: "v"}) is None
    assert encode(message_id="") is None
    assert encode(exchange="a!") is None  # pamqp refuses the name: so is the message
    assert encode(exchange="x" * 128) is None
