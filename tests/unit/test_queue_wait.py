"""Queue wait: the router stamps each dispatch with the time it sends it, the worker's SDK
observes the difference on its first delivery."""

from __future__ import annotations

import time

import pytest

from router.core import Effect
from router.outbox import _outgoing
from worker_sdk import wire
from worker_sdk.metrics import WorkerMetrics


def test_a_dispatch_carries_the_time_it_is_sent_and_a_notice_does_not() -> None:
    trace = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    before = time.time_ns() // 1_000_000
    dispatch = _outgoing(Effect("dispatch", "cb.service.a", "t.1", b"", dict(trace),
                                turn="t", attempt=1))
    after = time.time_ns() // 1_000_000
    sent = wire.sent_ms(dispatch.headers)
    assert sent is not None and before <= sent <= after
    assert dispatch.headers["traceparent"] == trace["traceparent"]
    notice = _outgoing(Effect("notice", "front", "n1", b"", dict(trace)))
    assert notice.headers == trace


@pytest.mark.parametrize(("raw", "expected"), [
    ("1764637000123", 1764637000123), (b"1764637000123", 1764637000123),
    (1764637000123, 1764637000123), ("", None), ("-5", None), ("1.5", None), ("x", None),
    ("9" * 17, None), (True, None), (None, None)])
def test_sent_ms_reads_only_a_plain_number(raw: object, expected: int | None) -> None:
    assert wire.sent_ms({wire.SENT_HEADER: raw}) == expected
    assert wire.sent_ms({}) is None and wire.sent_ms(None) is None


def test_queue_wait_counts_first_deliveries_with_a_time() -> None:
    m = WorkerMetrics()
    m.serving("a", 16)
    now_ms = time.time_ns() // 1_000_000

    def sample(suffix: str, **labels: str) -> float:
        found = m.registry.get_sample_value("cloudbunch_worker_queue_wait_seconds" + suffix,
                                            {"service": "a", **labels})
        return 0.0 if found is None else found

    assert sample("_count") == 0  # exposed from the start, at zero
    m.took("a", now_ms - 3_000, redelivered=False)
    m.took("a", now_ms - 60_000, redelivered=True)  # held by another worker meanwhile: not counted
    m.took("a", None, redelivered=False)  # a router that did not say when: not counted
    m.took("a", now_ms + 5_000, redelivered=False)  # a clock ahead of ours: 0
    assert sample("_count") == 2
    assert 3.0 <= sample("_sum") < 4.0
    assert sample("_bucket", le="0.001") == 1
    assert sample("_bucket", le="2.5") == 1
    assert sample("_bucket", le="5.0") == 2
