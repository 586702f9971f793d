"""How ``cloudbunch status`` judges what it saw (the screen is tested on RabbitMQ)."""

from __future__ import annotations

from router.status import QueueInfo, Sample, assess, management_url


def sample(**depths: tuple[int | None, int]) -> Sample:
    queues = {f"cb.{k.replace('__', '.')}": QueueInfo(f"cb.{k.replace('__', '.')}", m, c)
              for k, (m, c) in depths.items()}
    return Sample(queues, "passive declares")


def test_quiet_system_needs_nobody() -> None:
    s = sample(ingress=(0, 2), replies=(0, 2), dead=(4, 0), service__menu=(3, 1))
    assert assess("cb", s, s, 1.0) == []


def test_growing_dead_letters_need_a_person() -> None:
    before = sample(ingress=(0, 2), replies=(0, 2), dead=(4, 0))
    after = sample(ingress=(0, 2), replies=(0, 2), dead=(6, 0))
    assert assess("cb", before, after, 1.0) == [
        "dead letters growing: +2 in 1.0 s (cb.dead holds 6)"]


def test_dead_letter_rate_from_the_management_api() -> None:
    s = sample(ingress=(0, 2), replies=(0, 2), dead=(4, 0))
    s.queues["cb.dead"].publish_rate = 0.5
    assert assess("cb", s, s, 1.0) == ["dead letters growing: 0.50/s into cb.dead"]


def test_messages_without_consumers_need_a_person() -> None:
    s = sample(ingress=(3, 0), replies=(0, 1), dead=(0, 0), service__menu=(2, 0),
               service__order=(0, 0))
    assert assess("cb", s, s, 1.0) == [
        "no router consuming: 3 messages waiting in cb.ingress",
        "no workers for menu: 2 messages waiting in cb.service.menu"]


def test_management_url_defaults_to_the_broker_host() -> None:
    assert management_url(None, None, "amqp://u:p@rabbit:5672/") == "http://rabbit:15672"
    assert management_url("off", None, "amqp://h/") is None
    assert management_url(None, "http://m:1", "amqp://h/") == "http://m:1"
