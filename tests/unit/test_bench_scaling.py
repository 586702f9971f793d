"""bench.scaling: the capacity arithmetic of docs/scaling.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scaling


def _report(**medians: float) -> dict[str, object]:
    return {"figures": {k: {"median": v} for k, v in medians.items()}}


COSTS = dict(router_cpu_per_turn=1.0, worker_cpu_per_turn=0.5, redis_cpu_per_turn=0.2,
             rabbitmq_cpu_per_turn=2.0, direct_rabbitmq_cpu=0.4, growth_1000000_bytes=800.0)


def test_needs_scale_with_the_load_and_the_measured_costs() -> None:
    costs = scaling.Costs.of(_report(**COSTS), "test")
    assert costs.queue_message == pytest.approx(0.2)
    got = scaling.plan(costs, 10_000, utilisation=0.5)
    # 10,000 turns/s x 1 ms = 10 cores of router at 50 % each: 20 replicas.
    assert got["router_replicas"] == 20
    assert got["worker_processes"] == 10
    assert got["redis_shards"] == 4
    assert got["rabbitmq_cores"] == pytest.approx(40)
    assert got["ingress_queue_cores"] == pytest.approx(4)


def test_the_table_names_the_single_queue_limit_and_the_memory() -> None:
    text = scaling.render(scaling.Costs.of(_report(**COSTS), "test"), 0.5, 1_000_000)
    assert "| 1,000 | 2 | 1 | 1 | 4.0 | 0.40 (fits) |" in text
    assert "cap a namespace near 2,500 turns/s" in text
    assert "1,000,000 idle sessions at 800 B each: 0.7 GiB" in text


def test_a_results_file_without_the_pair_section_is_refused(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]
                                                           ) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_report(router_cpu_per_turn=1.0)))
    assert scaling.main([str(path)]) == 2
    assert "no 'worker_cpu_per_turn'" in capsys.readouterr().err
    assert scaling.main([str(tmp_path / "missing.json")]) == 2
    assert "run 'python -m bench' first" in capsys.readouterr().err
