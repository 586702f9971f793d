"""``python -m bench.scaling [RESULTS.json]``: what a given load needs, from measured costs.

Reads a results file of ``python -m bench`` (default ``bench/results/latest.json``; it needs
the ``pair`` section, and uses ``growth`` or ``sessions`` for memory when present) and prints
the capacity table of docs/scaling.md: for each load, the cores each part needs at the
measured CPU per turn, the router replicas, worker processes and Redis shards that makes,
and the load at which the single ``NS.ingress`` and ``NS.replies`` queues saturate.

Every figure is arithmetic on the measured ones; the assumptions are named in the output:
one Python process (router replica or worker) uses at most one core, Redis runs commands on
one core per shard, and no part should run above ``--utilisation`` of what it has.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import REPO

LATEST = REPO / "bench" / "results" / "latest.json"
LOADS = (1_000, 10_000, 100_000)
"""Turns per second the table sizes for."""


class Missing(LookupError):
    """The results file lacks a figure the arithmetic needs."""


@dataclass(frozen=True, slots=True)
class Costs:
    """Measured CPU per routed turn (ms) of each part, and what one queue message costs."""

    router: float
    worker: float
    redis: float
    rabbitmq: float
    queue_message: float
    """RabbitMQ CPU (ms) per message through one queue: half of a direct round trip's."""
    session_bytes: float | None
    source: str

    @classmethod
    def of(cls, report: dict[str, Any], source: str) -> Costs:
        figures = report.get("figures", {})

        def median(key: str) -> float:
            figure = figures.get(key)
            if figure is None or figure.get("median") is None:
                raise Missing(f"{source} has no {key!r}: run 'python -m bench' (the pair "
                              "section) first")
            return float(figure["median"])

        memory = [f["median"] for k, f in figures.items()
                  if k.startswith("growth_") and k.endswith("_bytes") and f.get("median")]
        if not memory and figures.get("memory_per_session", {}).get("median"):
            memory = [figures["memory_per_session"]["median"]]
        return cls(router=median("router_cpu_per_turn"), worker=median("worker_cpu_per_turn"),
                   redis=median("redis_cpu_per_turn"),
                   rabbitmq=median("rabbitmq_cpu_per_turn"),
                   queue_message=median("direct_rabbitmq_cpu") / 2,
                   session_bytes=max(memory) if memory else None, source=source)


def plan(costs: Costs, load: float, utilisation: float) -> dict[str, float]:
    """What ``load`` turns/s needs at the measured costs."""
    def cores(ms: float) -> float:
        return load * ms / 1000 / utilisation
    return {
        "router_cores": cores(costs.router),
        "router_replicas": math.ceil(cores(costs.router)),
        "worker_cores": cores(costs.worker),
        "worker_processes": math.ceil(cores(costs.worker)),
        "redis_cores": cores(costs.redis),
        "redis_shards": math.ceil(cores(costs.redis)),
        "rabbitmq_cores": cores(costs.rabbitmq),
        # Each turn passes NS.ingress once and NS.replies once: each is one queue process.
        "ingress_queue_cores": cores(costs.queue_message),
    }


def render(costs: Costs, utilisation: float, sessions: int) -> str:
    lines = [f"Measured per routed turn ({costs.source}): router {costs.router:.3f} ms, "
             f"worker {costs.worker:.3f} ms, Redis {costs.redis:.3f} ms, RabbitMQ "
             f"{costs.rabbitmq:.3f} ms of CPU; one message through one queue "
             f"{costs.queue_message:.3f} ms of RabbitMQ CPU.",
             f"Assumed: one core per router replica, worker process and Redis shard; every "
             f"part at most {utilisation:.0%} busy.", ""]
    head = ("| turns/s | router replicas | worker processes | Redis shards | RabbitMQ cores "
            "| NS.ingress queue (cores of one queue) |")
    lines += [head, "|---:|---:|---:|---:|---:|---:|"]
    for load in LOADS:
        p = plan(costs, load, utilisation)
        queue = p["ingress_queue_cores"]
        verdict = "fits" if queue <= 1 else "over one core: partition"
        lines.append(f"| {load:,} | {p['router_replicas']:,} | {p['worker_processes']:,} | "
                     f"{p['redis_shards']:,} | {p['rabbitmq_cores']:,.1f} | {queue:,.2f} "
                     f"({verdict}) |")
    ceiling = utilisation * 1000 / costs.queue_message
    lines += ["", f"One queue reaches {utilisation:.0%} of its core at about {ceiling:,.0f} "
              f"messages/s here (at least: the cost per message counts the channel and "
              f"connection work too): NS.ingress and NS.replies cap a namespace near "
              f"{ceiling:,.0f} turns/s, whatever the number of replicas."]
    if costs.session_bytes is not None:
        gib = sessions * costs.session_bytes / 2**30
        lines.append(f"Redis memory for {sessions:,} idle sessions at "
                     f"{costs.session_bytes:,.0f} B each: {gib:,.1f} GiB.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="?", type=Path, default=LATEST,
                   help="a results file of python -m bench [default bench/results/latest.json]")
    p.add_argument("--utilisation", type=float, default=0.7, metavar="F",
                   help="highest share of a core any part should use [default 0.7]")
    p.add_argument("--sessions", type=int, default=10_000_000, metavar="N",
                   help="idle sessions to size Redis memory for [default 10,000,000]")
    args = p.parse_args(argv)
    if not 0 < args.utilisation <= 1:
        p.error("--utilisation must be above 0 and at most 1")
    try:
        report = json.loads(args.results.read_text())
    except FileNotFoundError:
        print(f"python -m bench.scaling: no {args.results}: run 'python -m bench' first",
              file=sys.stderr)
        return 2
    try:
        source = str(args.results.resolve().relative_to(REPO))
    except ValueError:
        source = str(args.results)
    try:
        costs = Costs.of(report, source)
    except Missing as missing:
        print(f"python -m bench.scaling: {missing}", file=sys.stderr)
        return 2
    print(render(costs, args.utilisation, args.sessions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
