"""What router.metrics counts for each kind of step, read from the core's own values."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import generate_latest

from router.core import Event, Outcome
from router.metrics import RouterMetrics
from worker_sdk.amqp import AmqpBroker

from .core_harness import Harness


class Measured(Harness):
    """The core harness, with every applied step reported to a RouterMetrics."""

    def __init__(self, **cfg: Any) -> None:
        super().__init__(**cfg)
        self.metrics = RouterMetrics(self.cfg)

    def run(self, event: Event) -> Outcome:
        before = self.record
        out = super().run(event)
        if out.changed:
            self.metrics.stepped(event, before, out)
        return out

    def value(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found


def test_redispatch_then_timeout() -> None:
    h = Measured(max_attempts=2)
    h.send("hi")
    h.tick(1000)
    assert h.value("cloudbunch_router_redispatches_total", service="root") == 1
    assert h.value("cloudbunch_router_timeouts_total", service="root") == 0
    h.tick(1000)
    assert h.value("cloudbunch_router_timeouts_total", service="root") == 1
    assert h.value("cloudbunch_router_turns_total", service="root", event="start",
                   action="timeout") == 1
    assert h.value("cloudbunch_router_chains_total", outcome="error") == 1
    assert h.value("cloudbunch_router_notices_total", type="error") == 1


def test_invalid_reply_and_its_dead_letter() -> None:
    h = Measured()
    h.send("hi")
    h.answer("dance")
    assert h.value("cloudbunch_router_invalid_replies_total", service="root") == 1
    assert h.value("cloudbunch_router_turns_total", service="root", event="start",
                   action="invalid_reply") == 1
    assert h.value("cloudbunch_router_dead_letters_total", queue="t.replies",
                   reason="invalid") == 1


def test_unknown_service_on_open() -> None:
    h = Measured()
    h.send("hi")
    h.answer("open", service="nosuch")
    h.returned()
    assert h.value("cloudbunch_router_unknown_services_total", service="nosuch") == 1
    assert h.value("cloudbunch_router_turns_total", service="root", event="start",
                   action="open") == 1
    assert h.value("cloudbunch_router_turns_total", service="nosuch", event="start",
                   action="unknown_service") == 1


def test_turn_time_stack_depth_chains_and_backlog() -> None:
    h = Measured(max_waiting=2)
    h.send("hi")
    h.send("second")
    h.send("third")
    h.send("refused")
    assert h.value("cloudbunch_router_busy_refusals_total") == 1
    assert h.value("cloudbunch_router_session_backlog_count") == 4
    h.now += 250
    h.answer("open", service="child")
    assert h.value("cloudbunch_router_turn_seconds_sum", service="root") == 0.25
    assert h.value("cloudbunch_router_stack_depth_bucket", le="2.0") == 1
    assert h.value("cloudbunch_router_stack_depth_bucket", le="1.0") == 0
    h.answer("reply", output=["a", "b"])
    assert h.value("cloudbunch_router_chains_total", outcome="reply") == 1
    assert h.value("cloudbunch_router_notices_total", type="output") == 2
    h.answer("pass")   # "second" at the child: passed to the root
    h.answer("pass")   # the root passes too: unhandled
    assert h.value("cloudbunch_router_chains_total", outcome="unhandled") == 1
    h.answer("close")  # "third" at the child
    h.answer("close")  # the root closes: end
    assert h.value("cloudbunch_router_chains_total", outcome="end") == 1
    assert h.value("cloudbunch_router_stack_depth_count") == 6


def test_no_label_names_a_session_or_turn() -> None:
    h = Measured()
    h.send("hi")
    h.answer("reply")
    text = generate_latest(h.metrics.registry).decode()
    assert '"s1"' not in text and '"id0001"' not in text
    assert "session=" not in text and "turn=" not in text


def test_dependency_outages_count_transitions() -> None:
    m = RouterMetrics(Harness().cfg)
    for up in (True, False, False, True, False):
        m.dependency("redis", up)
    assert m.registry.get_sample_value("cloudbunch_router_outages_total",
                                       {"dependency": "redis"}) == 2
    assert m.registry.get_sample_value("cloudbunch_router_dependency_up",
                                       {"dependency": "redis"}) == 0


def test_idle_timers_set_and_fired() -> None:
    h = Measured(turn_timeout_ms=100_000)
    h.send("hi")
    h.answer("reply", idle=5)
    assert h.value("cloudbunch_router_idle_timers_set_total") == 1
    assert h.value("cloudbunch_router_idle_timers_fired_total") == 0
    h.tick(5_000)
    assert h.record is not None and h.record.turn is not None
    assert h.record.turn.event == "idle"
    assert h.value("cloudbunch_router_idle_timers_fired_total") == 1
    h.answer("reply")
    assert h.value("cloudbunch_router_turns_total", service="root", event="idle",
                   action="reply") == 1


def test_the_broker_connection_tells_the_metrics_of_every_outage_however_short() -> None:
    """An outage is counted when the connection reports it, not when a poll happens to see
    it: a local broker is back within a second. Once per outage; a callback that raises
    does not keep the others from hearing."""
    m = RouterMetrics(Harness().cfg)
    broker = AmqpBroker("amqp://guest:guest@127.0.0.1:1/")
    heard: list[bool] = []

    def broken(up: bool) -> None:
        raise RuntimeError("a broken listener")

    broker.on_state(broken)
    broker.on_state(lambda up: m.dependency("rabbitmq", up))
    broker.on_state(heard.append)
    connection = SimpleNamespace(url="amqp://guest:guest@127.0.0.1:1/")
    broker._connection = cast(Any, connection)
    for _ in range(2):
        broker._on_lost(connection, ConnectionError("cut"))
        broker._on_lost(connection, ConnectionError("the same cut, seen again"))
        assert m.registry.get_sample_value("cloudbunch_router_dependency_up",
                                           {"dependency": "rabbitmq"}) == 0
        broker._on_reconnected(connection)
    assert heard == [False, True, False, True]
    assert m.registry.get_sample_value("cloudbunch_router_outages_total",
                                       {"dependency": "rabbitmq"}) == 2
    assert m.registry.get_sample_value("cloudbunch_router_dependency_up",
                                       {"dependency": "rabbitmq"}) == 1

