"""bench.duel: two routers from two trees, side by side, each one's CPU per step."""

from __future__ import annotations

import os

from bench import duel
from bench.compare import REPO
from router.store import DEFAULT_REDIS_URL

REDIS_URL = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)


def test_steps_are_read_from_every_queue_of_the_metrics() -> None:
    text = ('# TYPE cloudbunch_router_deliveries_total counter\n'
            'cloudbunch_router_deliveries_total{queue="ingress"} 12.0\n'
            'cloudbunch_router_deliveries_total{queue="replies.3"} 30.0\n'
            'cloudbunch_router_deliveries_created{queue="ingress"} 1.7e9\n')
    assert duel.steps_of(text) == 42.0


async def test_both_routers_step_and_each_has_a_cost_per_step(amqp_url: str) -> None:
    out = await duel.duel(str(REPO), rounds=1, seconds=1.0, in_flight=20,
                          amqp_url=amqp_url, redis_url=REDIS_URL, partitions=4)
    (row,) = out["rounds"]
    assert row["head_steps"] > 0 and row["base_steps"] > 0, row
    assert 0 < row["head_ms_per_step"] < 100 and 0 < row["base_ms_per_step"] < 100, row
    assert out["ratio"]["median"] == row["ratio"]
