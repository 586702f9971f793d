"""The publish path's shortcut for content headers that certainly fit in one frame."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as spec
from pamqp.header import ContentHeader

from worker_sdk.amqp import _frame_refusal, _surely_small

FRAME = 131_064

text = st.text(max_size=3000)


@settings(max_examples=300, deadline=None)
@given(headers=st.dictionaries(st.text(min_size=1, max_size=60), text, max_size=60),
       message_id=st.text(max_size=200))
def test_a_header_called_small_always_fits_in_a_frame(headers: dict[str, str],
                                                      message_id: str) -> None:
    properties = spec.Basic.Properties(message_id=message_id, headers=headers or None)
    if _surely_small(properties, FRAME):
        size = len(ContentHeader(body_size=10, properties=properties).marshal())
        assert size <= FRAME


def test_many_medium_headers_that_add_up_past_a_frame_are_refused() -> None:
    headers = {f"h{i}": "v" * 4000 for i in range(40)}  # 160 KB in all, none big alone
    properties = spec.Basic.Properties(message_id="m", headers=headers)
    assert not _surely_small(properties, FRAME)
    refused = _frame_refusal(properties, 10, FRAME)
    assert refused is not None and "one frame holds" in refused.reason


def test_ordinary_headers_take_the_shortcut() -> None:
    properties = spec.Basic.Properties(message_id="x" * 22, headers={
        "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "x-cb-sent-ms": "1"})
    assert _surely_small(properties, FRAME)
    assert _frame_refusal(properties, 10, FRAME) is None
