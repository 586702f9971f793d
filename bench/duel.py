"""``python -m bench.duel BASE``: this checkout's router and another commit's, at the same time.

``python -m bench.compare`` alternates whole bench runs, and on a virtual machine whose speed
shifts by a third from one minute to the next, a lever of a few percent drowns in that. Here
both routers run *together*, as two replicas of one partitioned deployment (``--partitions``,
so each steps its own sessions with its own record cache and no conflicts): whatever the
machine does, it does to both in the same seconds. The worker, the client and the load are
the bench's (200 in flight over 1,000 sessions); each round measures, over one window, each
router's CPU and the deliveries it stepped (its ``/metrics``), and the figure is CPU per step
of this checkout's router over the base's. The two swap nothing else: each keeps its
partitions for the whole run (the window opens once both have seen each other).

The base must have ``--partitions`` (commit 5815600 and later). Every queue and key is
deleted at the end, as in ``python -m bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import sys
import time
import urllib.request
from typing import Any

from harness.processes import Proc, child_env
from router.store import DEFAULT_REDIS_URL
from worker_sdk.settings import DEFAULT_AMQP_URL

from .compare import CompareError, base_tree, say, write_results
from .load import closed_loop
from .procs import cpu_seconds, run_loop
from .routed import Routed
from .run import machine
from .stats import Figure, Summary, _num

DELIVERIES = re.compile(r"^cloudbunch_router_deliveries_total\{[^}]*\} (\S+)$", re.M)


def steps_of(metrics: str) -> float:
    """Deliveries the router has stepped so far (all its queues), from its ``/metrics``."""
    return sum(float(v) for v in DELIVERIES.findall(metrics))


def _metrics(proc: Proc) -> str:
    port = re.search(r"event=metrics_listening port=(\d+)", proc.output())
    if port is None:
        raise CompareError(f"{proc.name} serves no metrics:\n{proc.output(2000)}")
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/metrics", timeout=10) as r:
        return str(r.read().decode())


async def _both_see_each_other(routed: Routed, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all("replicas_changed replicas=2" in p.output() for p in routed.routers):
        if time.monotonic() > deadline:
            raise CompareError("the two routers did not see each other within "
                               f"{timeout:.0f} s:\n{routed.routers[-1].output(2000)}")
        await asyncio.sleep(0.1)


async def duel(base_path: str, rounds: int, seconds: float, in_flight: int,
               amqp_url: str, redis_url: str, partitions: int) -> dict[str, Any]:
    """Each round's CPU per step of each router, and their ratios (this / base)."""
    env = child_env(PYTHONSAFEPATH="1")  # the base's code first, not the working directory's
    env["PYTHONPATH"] = base_path + os.pathsep + env["PYTHONPATH"]
    routed = Routed("duel" + secrets.token_hex(4), amqp_url, redis_url, "quorum",
                    prefetch=64, routers=2, partitions=partitions,
                    process_args=["--metrics-port", "0"], router_envs=[None, env])
    await routed.start()
    head, base = routed.routers
    keys = [f"s{i}" for i in range(1000)]
    out: dict[str, Any] = {"rounds": []}
    try:
        await _both_see_each_other(routed)
        await asyncio.gather(*(routed.turn(k) for k in keys))  # every session opened
        for n in range(1, rounds + 1):
            marks: dict[str, tuple[float, float]] = {}

            def on_window(opening: bool, marks: dict[str, tuple[float, float]] = marks) -> None:
                for proc in (head, base):
                    cpu, steps = cpu_seconds(proc.pid) or 0.0, steps_of(_metrics(proc))
                    if opening:
                        marks[proc.name] = (cpu, steps)
                    else:
                        cpu0, steps0 = marks[proc.name]
                        marks[proc.name] = (cpu - cpu0, steps - steps0)

            await closed_loop(routed.turn, keys, in_flight=in_flight, warmup=1.0,
                              duration=seconds, on_window=on_window)
            per_step = {name: 1000 * cpu / max(steps, 1) for name, (cpu, steps) in marks.items()}
            row = {"head_ms_per_step": per_step[head.name],
                   "base_ms_per_step": per_step[base.name],
                   "head_steps": marks[head.name][1], "base_steps": marks[base.name][1],
                   "ratio": per_step[head.name] / per_step[base.name]}
            out["rounds"].append(row)
            say(f"round {n}/{rounds}: CPU per step {row['head_ms_per_step']:.3f} ms (this, "
                f"{row['head_steps']:.0f} steps) vs {row['base_ms_per_step']:.3f} ms (base, "
                f"{row['base_steps']:.0f} steps): {row['ratio']:.3f}")
    finally:
        await routed.stop()
    ratio = Summary.of(r["ratio"] for r in out["rounds"])
    out["ratio"] = {"median": ratio.median, "min": ratio.low, "max": ratio.high}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.duel", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE",
                   help="the commit, branch or tag to run against (or a checkout's path)")
    p.add_argument("--rounds", type=int, default=5, metavar="N",
                   help="measured windows [default 5]")
    p.add_argument("--seconds", type=float, default=8.0, metavar="S",
                   help="seconds each window lasts [default 8]")
    p.add_argument("--in-flight", type=int, default=200, metavar="N",
                   help="requests in flight [default 200]")
    p.add_argument("--partitions", type=int, default=16, metavar="N",
                   help="partitions the two routers share out [default 16]")
    p.add_argument("--amqp-url", default=os.environ.get("CLOUDBUNCH_AMQP_URL",
                                                        DEFAULT_AMQP_URL))
    p.add_argument("--redis-url", default=os.environ.get("CLOUDBUNCH_REDIS_URL",
                                                         DEFAULT_REDIS_URL))
    args = p.parse_args(argv)
    try:
        if args.rounds < 1 or args.seconds <= 0:
            raise CompareError("--rounds must be at least 1 and --seconds above 0")
        with base_tree(args.base) as tree:
            revision = tree.revision
            say(f"this checkout's router against {tree.revision!r}'s, side by side, "
                f"{args.partitions} partitions")
            result: dict[str, Any] = {}

            async def go() -> None:
                result.update(await duel(str(tree.path), args.rounds, args.seconds,
                                         args.in_flight, args.amqp_url, args.redis_url,
                                         args.partitions))
            run_loop(go(), uvloop=False)
    except CompareError as exc:
        print(f"python -m bench.duel: {exc}", file=sys.stderr)
        return 2
    r = result["ratio"]
    print(f"router CPU per step, this / base: {_num(r['median'])} (median of "
          f"{args.rounds} rounds; range {_num(r['min'])} - {_num(r['max'])})")
    rounds = result["rounds"]
    figures = [
        Figure("duel_ratio", "router CPU per step, this / base (both running at once)",
               "ratio", Summary.of(x["ratio"] for x in rounds)),
        Figure("duel_head_cpu_per_step", "this checkout's router CPU per step", "ms",
               Summary.of(x["head_ms_per_step"] for x in rounds)),
        Figure("duel_base_cpu_per_step", "the base's router CPU per step", "ms",
               Summary.of(x["base_ms_per_step"] for x in rounds))]
    report = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "plan": {"command": " ".join(["python -m bench.duel", *(argv or sys.argv[1:])]),
                       "base": revision, "rounds": args.rounds, "seconds": args.seconds,
                       "in_flight": args.in_flight, "partitions": args.partitions},
              "machine": machine(), "figures": {f.key: f.to_json() for f in figures}}
    write_results("duel", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
