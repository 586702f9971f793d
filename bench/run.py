"""``python -m bench``: measure routed turns against a direct baseline, side by side.

Everything runs on the real RabbitMQ and Redis in a random namespace, bounded in time, and
every queue and key of that namespace is deleted at the end (keys also expire within an
hour should cleanup never run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import math
import os
import platform
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.store import DEFAULT_REDIS_URL
from worker_sdk import wire
from worker_sdk.settings import DEFAULT_AMQP_URL

from . import profile as pyspy
from .direct import Requester, rabbitmq_server
from .embedded import Embedded
from .load import LoadResult, closed_loop, interleaved, run_all
from .procs import REPO, CpuMeter, Proc, find_pids
from .routed import Routed, loop_of
from .stats import Figure, Summary, Target, format_markdown, format_table, ratios

log = logging.getLogger("bench")

RESULTS = REPO / "bench" / "results"
REPLICAS_PARTITIONS = 4
"""Partitions of the replicas section's partitioned deployment."""
SECTIONS = ("pair", "depth", "sessions", "history", "embedded", "growth", "replicas")
DEFAULT_SECTIONS = ("pair", "depth", "sessions", "history", "embedded")
"""What a plain ``python -m bench`` runs (growth and replicas only on request)."""
"""What a plain ``python -m bench`` runs; ``growth`` (minutes, 1M sessions) on request."""
MAX_DEPTH = 32
"""The router's default --max-depth: the deepest stack the growth section builds."""


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how big each measurement is."""

    runs: int
    warmup: float
    window: float
    latency_window: float
    in_flight: int
    sessions: int
    idle_sessions: int
    depth: int
    depth_sessions: int
    profile_seconds: float
    limit: float
    growth: tuple[int, ...] = (10_000, 100_000, 1_000_000)


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    return Plan(
        runs=args.runs if args.runs is not None else (1 if quick else 3),
        warmup=0.5 if quick else 1.0,
        window=args.window or (1.5 if quick else 4.0),
        latency_window=1.0 if quick else 2.5,
        in_flight=args.in_flight,
        sessions=1000,
        idle_sessions=args.sessions or (10_000 if quick else 100_000),
        depth=args.depth,
        depth_sessions=60 if quick else args.in_flight,
        profile_seconds=4.0 if quick else 10.0,
        limit=args.limit or (150.0 if quick else 600.0 if args.growth is None else 1800.0),
        growth=tuple(sorted(args.growth)) if args.growth else (
            (2_000, 10_000) if quick else (10_000, 100_000, 1_000_000)),
    )


@dataclass
class Bench:
    """One run of the bench: its deployment, plan and collected figures."""

    plan: Plan
    sections: tuple[str, ...]
    amqp_url: str
    redis_url: str
    queue_type: str
    do_profile: bool
    history: int | None = None
    process_args: tuple[str, ...] = ()
    """Extra options of the router and worker processes (--metrics-port 0, ...)."""
    ns: str = field(default_factory=lambda: "bench" + secrets.token_hex(4))
    figures: list[Figure] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    routed: Routed | None = None
    forwarded: Routed | None = None
    """The ceiling: the same deployment with bench.forwarder in place of the router."""
    requester: Requester | None = None
    responder: Proc | None = None
    embedded: Embedded | None = None
    main_keys: list[str] = field(default_factory=list)
    profiles: dict[str, pyspy.Profile] = field(default_factory=dict)
    others: list[float] = field(default_factory=list)

    # ------------------------------------------------------------------ helpers

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def add(self, key: str, label: str, unit: str, runs: list[float], *,
            target: Target | None = None, note: str = "", **extra: Any) -> Figure:
        figure = Figure(key, label, unit, Summary.of(runs), target, note, extra)
        self.figures.append(figure)
        return figure

    def infra_pids(self) -> dict[str, list[int]]:
        return {"redis": find_pids("redis-server"), "rabbitmq": find_pids("beam.smp")}

    def our_pids(self) -> dict[str, list[int]]:
        """The processes of the bench (and the servers), by role."""
        pids: dict[str, list[int]] = {"bench": [os.getpid()], **self.infra_pids()}
        if self.routed is not None and self.routed.router is not None:
            pids["router"] = [self.routed.router.pid]
        if self.routed is not None and self.routed.worker is not None:
            pids["worker"] = [self.routed.worker.pid]
        if self.responder is not None:
            pids["responder"] = [self.responder.pid]
        if self.forwarded is not None and self.forwarded.router is not None:
            pids["forwarder"] = [self.forwarded.router.pid]
        if self.forwarded is not None and self.forwarded.worker is not None:
            pids["forwarder_worker"] = [self.forwarded.worker.pid]
        return pids

    async def load(self, request: Callable[[str], Awaitable[None]], keys: list[str], *,
                   in_flight: int, latency: bool = False,
                   meter: CpuMeter | None = None) -> LoadResult:
        """One measured window; the CPU other processes used meanwhile is kept too."""
        plan = self.plan
        window = plan.latency_window if latency else plan.window
        warmup = min(plan.warmup, 0.3) if latency else plan.warmup
        meter = meter or CpuMeter(self.our_pids())

        def on_window(opening: bool) -> None:
            (meter.start if opening else meter.stop)()

        result = await closed_loop(request, keys, in_flight=in_flight, warmup=warmup,
                                   duration=window, on_window=on_window)
        self.others.append(meter.others_cores())
        return result

    async def latencies(self, requests: dict[str, Callable[[str], Awaitable[None]]]
                        ) -> dict[str, LoadResult]:
        """Latency at 1 in flight of several paths, taken in turn in one window (as long as
        one latency window per path), so that each sees the same moments of the machine."""
        plan = self.plan
        meter = CpuMeter(self.our_pids())

        def on_window(opening: bool) -> None:
            (meter.start if opening else meter.stop)()

        result = await interleaved(requests, self.main_keys, warmup=min(plan.warmup, 0.3),
                                   duration=plan.latency_window * len(requests),
                                   on_window=on_window)
        self.others.append(meter.others_cores())
        return result

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        needs_routed = bool({"pair", "depth", "sessions", "history", "growth"}
                            & set(self.sections)) \
            or self.do_profile
        if needs_routed:
            self.routed = Routed(self.ns, self.amqp_url, self.redis_url, self.queue_type,
                                 prefetch=64, history=self.history,
                                 process_args=self.process_args)
            self.say(f"namespace {self.ns}: starting router and worker processes")
            await self.routed.start()
            self.report["redis"] = await self.routed.redis_info()
            assert self.routed.worker is not None
            self.report["worker_loop"] = loop_of(self.routed.worker.pid)
            assert self.routed.router is not None
            self.report["router_loop"] = loop_of(self.routed.router.pid)
        if "pair" in self.sections:
            loop_name = self.report.get("worker_loop", "asyncio")
            queues = f"{self.ns}.direct.requests", f"{self.ns}.direct.replies"
            self.requester = Requester(self.amqp_url, *queues, self.queue_type)
            await self.requester.open()
            self.report["rabbitmq"] = self.requester.server
            # The baseline's service runs on the event loop the CloudBunch worker runs on,
            # so the two differ by the router alone.
            argv = ["-m", "bench.direct", "--amqp-url", self.amqp_url, "--queue", queues[0],
                    "--prefetch", "64"] + (["--uvloop"] if loop_name == "uvloop" else [])
            self.responder = await Proc.python("responder", *argv)
            self.report["baseline_loop"] = loop_name
            assert self.routed is not None
            await self.routed._ready(self.responder, queues[0])
            self.forwarded = Routed(self.ns + "f", self.amqp_url, self.redis_url,
                                    self.queue_type, prefetch=64, relay="forwarder")
            await self.forwarded.start()

    async def stop(self) -> None:
        """Stop every process and delete every queue and key (each step bounded)."""
        if self.embedded is not None:
            with contextlib.suppress(Exception):
                await self.embedded.stop()
        if self.responder is not None:
            await self.responder.stop()
            self.responder.close()
        if self.requester is not None:
            await self.requester.close()
        if self.forwarded is not None:
            await self.forwarded.stop()
        if self.routed is not None:
            await self.routed.stop()

    # ------------------------------------------------------------------ sections

    async def pair(self) -> None:
        """direct vs routed: throughput at N in flight, latency at 1 in flight, router CPU."""
        routed, requester, plan = self.routed, self.requester, self.plan
        forwarded = self.forwarded
        assert routed is not None and requester is not None and self.responder is not None
        assert forwarded is not None
        await self.warm_main()
        assert routed.router is not None and routed.worker is not None
        pids = self.our_pids()
        d_rate, r_rate, d_p50, d_p99, r_p50, r_p99 = [], [], [], [], [], []
        f_rate, f_p50, ping_p50 = [], [], []
        cpu: dict[str, list[float]] = {}
        d_cpu: dict[str, list[float]] = {}
        f_cpu: dict[str, list[float]] = {}
        calls: dict[str, list[float]] = {}

        def window(request: Callable[[str], Awaitable[None]], names: tuple[str, ...],
                   into: dict[str, list[float]], *, count_calls: bool = False
                   ) -> Callable[[], Awaitable[LoadResult]]:
            """One throughput window of a path, with the CPU per round trip of ``names`` (and
            the system calls of the router and Redis, with ``count_calls``)."""
            async def measure() -> LoadResult:
                meter = CpuMeter(pids)
                got = await self.load(request, self.main_keys, in_flight=plan.in_flight,
                                      meter=meter)
                for name in names:
                    if name in meter.used:
                        into.setdefault(name, []).append(1000 * meter.used[name] /
                                                         max(got.completed, 1))
                if count_calls:
                    for name in ("router", "redis"):
                        if name in meter.calls:
                            reads, writes = meter.calls[name]
                            calls.setdefault(name, []).append(
                                (reads + writes) / max(got.completed, 1))
                return got
            return measure

        windows = [
            ("forwarded", window(forwarded.turn,
                                 ("forwarder", "forwarder_worker", "bench", "rabbitmq"), f_cpu)),
            ("direct", window(requester.request, ("responder", "bench", "rabbitmq", "redis"),
                              d_cpu)),
            ("routed", window(routed.turn, ("router", "worker", "bench", "rabbitmq", "redis"),
                              cpu, count_calls=True)),
        ]
        for i in range(plan.runs):
            # The order rotates run by run, so that no path always comes first or last
            # (after a warm-up, or before the latency window).
            rates = {name: await measure()
                     for name, measure in windows[i % 3:] + windows[:i % 3]}
            f, d, r = rates["forwarded"], rates["direct"], rates["routed"]
            f_rate.append(f.rate)
            lat = await self.latencies({"direct": requester.request,
                                        "forwarded": forwarded.turn, "routed": routed.turn})
            dl, fl, rl = lat["direct"], lat["forwarded"], lat["routed"]
            f_p50.append(fl.p50_ms)
            pl = await self.load(lambda _: routed.store.ping(), self.main_keys, in_flight=1,
                                 latency=True)
            ping_p50.append(pl.p50_ms)
            d_rate.append(d.rate)
            r_rate.append(r.rate)
            d_p50.append(dl.p50_ms)
            d_p99.append(dl.p99_ms)
            r_p50.append(rl.p50_ms)
            r_p99.append(rl.p99_ms)
            self.say(f"run {i + 1}/{plan.runs}: direct {d.rate:.0f}/s, routed {r.rate:.0f}/s "
                     f"({r.rate / d.rate:.2f}); p50 direct {dl.p50_ms:.2f} ms, routed "
                     f"{rl.p50_ms:.2f} ms; router CPU "
                     f"{cpu.get('router', [math.nan])[-1]:.3f} ms/turn")
        n = plan.in_flight
        self.add("direct_throughput", f"direct round trips/s ({n} in flight)", "1/s", d_rate)
        self.add("routed_throughput", f"routed turns/s ({n} in flight, 1,000 sessions)", "1/s",
                 r_rate)
        self.add("forwarder_throughput", f"forwarder turns/s ({n} in flight): the ceiling",
                 "1/s", f_rate)
        self.add("ratio_throughput", "routed / direct throughput", "ratio",
                 ratios(r_rate, d_rate), target=Target(">=", 0.40))
        self.add("ratio_routed_forwarder", "routed / forwarder throughput (router's own "
                 "efficiency)", "ratio", ratios(r_rate, f_rate), target=Target(">=", 0.85))
        self.add("ratio_forwarder_direct", "forwarder / direct throughput (price of the "
                 "extra hops)", "ratio", ratios(f_rate, d_rate))
        self.add("forwarder_p50", "forwarder p50 (1 in flight)", "ms", f_p50)
        self.add("direct_p50", "direct p50 (1 in flight)", "ms", d_p50)
        self.add("direct_p99", "direct p99 (1 in flight)", "ms", d_p99)
        self.add("routed_p50", "routed p50 (1 in flight)", "ms", r_p50)
        self.add("routed_p99", "routed p99 (1 in flight)", "ms", r_p99)
        self.add("ratio_p50", "routed / direct p50", "ratio", ratios(r_p50, d_p50),
                 target=Target("<=", 2.5))
        self.add("ratio_forwarder_direct_p50", "forwarder / direct p50 (the price of the "
                 "extra hops in latency)", "ratio", ratios(f_p50, d_p50))
        self.add("ratio_routed_forwarder_p50", "routed / forwarder p50 (the router's own "
                 "latency: two Redis round trips and its CPU; the hops are the same)", "ratio",
                 ratios(r_p50, f_p50))
        self.add("redis_ping_p50", "Redis PING p50 (1 in flight): one round trip to Redis",
                 "ms", ping_p50)
        self.add("router_cpu_per_turn", "router CPU per turn", "ms", cpu.get("router", []),
                 target=Target("<=", 0.8))
        for name in ("worker", "bench", "redis", "rabbitmq"):
            if name in cpu:
                self.add(f"{name}_cpu_per_turn", f"  {name} CPU per routed turn", "ms",
                         cpu[name])
        for name in ("router", "redis"):
            if name in calls:
                self.add(f"{name}_syscalls_per_turn", f"  {name} read+write system calls per "
                         "routed turn", "calls", calls[name],
                         note="/proc/PID/io syscr+syscw: fewer, larger socket reads and "
                              "writes is what batching buys")
        for name in ("responder", "bench", "rabbitmq", "redis"):
            if name in d_cpu:
                self.add(f"direct_{name}_cpu", f"  {name} CPU per direct round trip", "ms",
                         d_cpu[name])
        for name in ("forwarder", "forwarder_worker", "bench", "rabbitmq"):
            if name in f_cpu:
                self.add(f"forwarded_{name}_cpu", f"  {name} CPU per forwarded turn", "ms",
                         f_cpu[name])
        if "router" in cpu and "forwarder" in f_cpu:
            self.add("ratio_router_forwarder_cpu", "router CPU / forwarder CPU per turn (the "
                     "router's own work; both Python relays, so the machine's speed cancels)",
                     "ratio", ratios(cpu["router"], f_cpu["forwarder"]))
        if "rabbitmq" in cpu and "rabbitmq" in d_cpu:
            self.add("ratio_rabbitmq_cpu", "RabbitMQ CPU per routed turn / per direct round "
                     "trip", "ratio", ratios(cpu["rabbitmq"], d_cpu["rabbitmq"]),
                     target=Target("<=", 2.5))

    async def replicas_section(self) -> None:
        """Two router replicas on the shared queues against two on partitioned ones
        (``--partitions``), alternated run by run: turns/s and CPU per turn."""
        plan = self.plan
        deployments = {
            "shared": Routed(self.ns + "r", self.amqp_url, self.redis_url, self.queue_type,
                             prefetch=64, routers=2),
            "partitioned": Routed(self.ns + "p", self.amqp_url, self.redis_url,
                                  self.queue_type, prefetch=64, routers=2,
                                  partitions=REPLICAS_PARTITIONS)}
        started: list[Routed] = []
        keys = [f"s{i:04d}" for i in range(plan.sessions)]
        rates: dict[str, list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        try:
            for name, deployment in deployments.items():
                self.say(f"replicas: starting 2 routers ({name}) and a worker")
                await deployment.start()
                started.append(deployment)
                if "rabbitmq" not in self.report:
                    self.report["rabbitmq"] = await rabbitmq_server(self.amqp_url)
                if "redis" not in self.report:
                    self.report["redis"] = await deployment.redis_info()
                    self.report["router_loop"] = loop_of(deployment.routers[0].pid)
                    assert deployment.worker is not None
                    self.report["worker_loop"] = loop_of(deployment.worker.pid)
                await run_all(deployment.turn, keys, concurrency=plan.in_flight, timeout=120)
            for i in range(plan.runs):
                for name, deployment in deployments.items():
                    assert deployment.worker is not None
                    meter = CpuMeter({"routers": [p.pid for p in deployment.routers],
                                      "worker": [deployment.worker.pid],
                                      "bench": [os.getpid()], **self.infra_pids()})
                    r = await self.load(deployment.turn, keys, in_flight=plan.in_flight,
                                        meter=meter)
                    rates.setdefault(name, []).append(r.rate)
                    for role in ("routers", "redis", "rabbitmq"):
                        if role in meter.used:
                            cpu.setdefault((name, role), []).append(
                                1000 * meter.used[role] / max(r.completed, 1))
                self.say(f"replicas run {i + 1}/{plan.runs}: shared {rates['shared'][-1]:.0f}"
                         f"/s, partitioned {rates['partitioned'][-1]:.0f}/s")
        finally:
            for deployment in started:
                await deployment.stop()
        n = plan.in_flight
        for name, deployment in deployments.items():
            self.add(f"replicas_{name}_throughput", f"2 routers, {name} ingress: turns/s "
                     f"({n} in flight)", "1/s", rates.get(name, []))
            stats = _router_stats(deployment.outputs)
            if stats.get("steps"):
                self.add(f"replicas_{name}_conflicts", f"  steps that met another replica's "
                         f"(per 1,000 steps, {name})", "count",
                         [1000 * (stats.get("cas_retries", 0) + stats.get("leftover_waits", 0))
                          / stats["steps"]],
                         note="compare-and-set retries and waits for another replica's "
                              "outbox, from the routers' last log line, over the whole "
                              "section")
            for role in ("routers", "redis", "rabbitmq"):
                self.add(f"replicas_{name}_{role}_cpu", f"  {role} CPU per turn ({name})",
                         "ms", cpu.get((name, role), []))
        self.add("ratio_replicas", "partitioned / shared throughput (2 routers)", "ratio",
                 ratios(rates.get("partitioned", []), rates.get("shared", [])))
        self.add("ratio_replicas_router_cpu", "partitioned / shared router CPU per turn",
                 "ratio", ratios(cpu.get(("partitioned", "routers"), []),
                                 cpu.get(("shared", "routers"), [])))

    async def warm_main(self) -> None:
        """Open the 1,000 sessions the throughput runs use (one start turn each)."""
        if self.main_keys:
            return
        assert self.routed is not None
        self.main_keys = [f"s{i:04d}" for i in range(self.plan.sessions)]
        took = await run_all(self.routed.turn, self.main_keys, concurrency=self.plan.in_flight,
                             timeout=120)
        self.say(f"opened {len(self.main_keys)} sessions in {took:.1f} s")

    async def depth_section(self) -> None:
        """Turn throughput with the active frame at depth N versus depth 1."""
        routed, plan = self.routed, self.plan
        assert routed is not None
        n = plan.depth_sessions
        shallow = [f"d1-{i:04d}" for i in range(n)]
        deep = [f"d{plan.depth}-{i:04d}" for i in range(n)]

        async def build(depth: int, keys: list[str]) -> float:
            async def one(key: str) -> None:
                await routed.build(key, depth)
            return await run_all(one, keys, concurrency=plan.in_flight, timeout=300)

        await build(1, shallow)
        took = await build(plan.depth, deep)
        got = await routed.depth_of(deep[0])
        if got != plan.depth:
            raise RuntimeError(f"session {deep[0]!r} has {got} frames, not {plan.depth}")
        self.say(f"built {n} stacks of {plan.depth} frames ({n * plan.depth} turns) in "
                 f"{took:.1f} s")
        r1, rn = [], []
        for i in range(plan.runs):
            # Every other run the deep stacks go first: neither always follows the other.
            first, second = (shallow, deep) if i % 2 == 0 else (deep, shallow)
            x = await self.load(routed.turn, first, in_flight=min(plan.in_flight, n))
            y = await self.load(routed.turn, second, in_flight=min(plan.in_flight, n))
            a, b = (x, y) if i % 2 == 0 else (y, x)
            r1.append(a.rate)
            rn.append(b.rate)
            self.say(f"run {i + 1}/{plan.runs}: depth 1 {a.rate:.0f}/s, depth {plan.depth} "
                     f"{b.rate:.0f}/s ({b.rate / a.rate:.2f})")
        self.add("depth1_throughput", f"turns/s, top frame at depth 1 ({n} sessions)", "1/s",
                 r1)
        self.add("depthN_throughput", f"turns/s, top frame at depth {plan.depth}", "1/s", rn)
        self.add("ratio_depth", f"depth {plan.depth} / depth 1 throughput", "ratio",
                 ratios(rn, r1), target=Target(">=", 0.9),
                 build_turns_per_s=n * plan.depth / took)

    async def sessions_section(self) -> None:
        """Redis memory per idle session, and throughput with many sessions live."""
        routed, plan = self.routed, self.plan
        assert routed is not None
        # The reference: the same load over 1,000 sessions, measured just before the many
        # are written (so both are close in time on a machine whose load drifts).
        await self.warm_main()
        base_rates = []
        for _ in range(plan.runs):
            r = await self.load(routed.turn, self.main_keys, in_flight=plan.in_flight)
            base_rates.append(r.rate)
        # What the router itself leaves for a new session after one answered message.
        made = [f"fresh-{i:02d}" for i in range(20)]
        await run_all(routed.turn, made, concurrency=20, timeout=60)
        made_bytes = [await routed.session_bytes(s) for s in made]
        count = plan.idle_sessions
        keys = [f"idle-{i:06d}" for i in range(count)]
        await asyncio.sleep(0.5)
        before = await routed.used_memory()
        took = await routed.write_sessions(keys)
        await asyncio.sleep(0.5)
        after = await routed.used_memory()
        per = (after - before) / count
        synth_bytes = [await routed.session_bytes(s) for s in random.sample(keys, 200)]
        self.say(f"wrote {count:,} idle sessions in {took:.1f} s ({count / took:,.0f}/s): "
                 f"used_memory +{(after - before) / 1e6:.1f} MB, {per:.0f} B per session")
        self.add("memory_per_session", f"Redis used_memory per idle session "
                 f"({count:,}, 100 B state)", "B", [per], target=Target("<=", 1024),
                 note="one measurement (before/after), not a median",
                 sessions=count, used_memory_before=before, used_memory_after=after,
                 write_seconds=took,
                 memory_usage_keys_synthetic=sum(synth_bytes) / len(synth_bytes),
                 memory_usage_keys_router_made=sum(made_bytes) / len(made_bytes),
                 written_by="RedisStore.commit with a router.core.Record of the shape the "
                            "router leaves after one answered message (the router itself "
                            "opens sessions at its turn rate, too slow for this many)")
        rates = []
        for i in range(plan.runs):
            sample = random.sample(keys, plan.sessions)
            r = await self.load(routed.turn, sample, in_flight=plan.in_flight)
            rates.append(r.rate)
            self.say(f"run {i + 1}/{plan.runs}: {r.rate:.0f} turns/s over 1,000 of "
                     f"{count:,} live sessions")
        self.add("many_sessions_throughput", f"routed turns/s, {count:,} live sessions", "1/s",
                 rates, note="1,000 sessions driven, a new random sample of the live ones "
                             "each run")
        self.add("few_sessions_throughput", "routed turns/s, 1,000 live sessions", "1/s",
                 base_rates, note="measured just before the idle sessions were written")
        self.add("ratio_many_sessions", f"throughput {count:,} / 1,000 live sessions",
                 "ratio", ratios(rates, base_rates),
                 note="run i with many sessions against run i with 1,000")

    async def growth_section(self) -> None:
        """Cost as work grows: Redis memory and turn cost with more and more idle sessions
        live, and with deeper stacks (1, the --depth, the router's maximum)."""
        routed, plan = self.routed, self.plan
        assert routed is not None
        await asyncio.sleep(0.5)
        base = await routed.used_memory()
        keys: list[str] = []
        pids = self.our_pids()
        for count in plan.growth:
            more = [f"grow-{i:07d}" for i in range(len(keys), count)]
            took = await routed.write_sessions(more)
            keys.extend(more)
            await asyncio.sleep(0.5)
            used = await routed.used_memory()
            rates, p50s, cpus = await self._turn_costs(
                lambda: random.sample(keys, plan.sessions), plan.in_flight, pids)
            per = (used - base) / count
            self.say(f"{count:,} idle sessions (+{len(more):,} in {took:.1f} s): {per:.0f} B "
                     f"each; {statistics.median(rates):.0f} turns/s, p50 "
                     f"{statistics.median(p50s):.2f} ms, router CPU "
                     f"{statistics.median(cpus):.3f} ms/turn")
            label = f"{count:,} idle sessions"
            self.add(f"growth_{count}_bytes", f"Redis used_memory per session, {label}", "B",
                     [per], note="one measurement (before/after)", used_memory=used,
                     write_seconds=took)
            self.add(f"growth_{count}_throughput", f"routed turns/s, {label}", "1/s", rates)
            self.add(f"growth_{count}_p50", f"routed p50 (1 in flight), {label}", "ms", p50s)
            self.add(f"growth_{count}_router_cpu", f"router CPU per turn, {label}", "ms", cpus)
        n = min(plan.depth_sessions, 100)
        for depth in sorted({1, plan.depth, MAX_DEPTH}):
            stacks = [f"stack{depth}-{i:03d}" for i in range(n)]

            async def build(key: str, depth: int = depth) -> None:
                await routed.build(key, depth)
            await run_all(build, stacks, concurrency=plan.in_flight, timeout=300)
            got = await routed.depth_of(stacks[0])
            if got != depth:
                raise RuntimeError(f"session {stacks[0]!r} has {got} frames, not {depth}")
            rates, p50s, cpus = await self._turn_costs(
                lambda stacks=stacks: stacks, min(plan.in_flight, n), pids)
            size = statistics.median([await routed.session_bytes(k) for k in stacks[:20]])
            self.say(f"stacks of {depth}: {statistics.median(rates):.0f} turns/s, p50 "
                     f"{statistics.median(p50s):.2f} ms, router CPU "
                     f"{statistics.median(cpus):.3f} ms/turn, {size:,.0f} B per session")
            label = f"stack of {depth} frame{'s' if depth > 1 else ''} ({n} sessions)"
            self.add(f"stack_{depth}_throughput", f"routed turns/s, {label}", "1/s", rates)
            self.add(f"stack_{depth}_p50", f"routed p50 (1 in flight), {label}", "ms", p50s)
            self.add(f"stack_{depth}_router_cpu", f"router CPU per turn, {label}", "ms", cpus)
            self.add(f"stack_{depth}_bytes", f"Redis MEMORY USAGE per session, {label}", "B",
                     [size], note="median of 20 sessions")

    async def _turn_costs(self, pick: Callable[[], list[str]], in_flight: int,
                          pids: dict[str, list[int]]
                          ) -> tuple[list[float], list[float], list[float]]:
        """Per run: turns/s at ``in_flight``, p50 at 1 in flight and router CPU per turn (ms),
        over the sessions ``pick`` gives for that run."""
        routed = self.routed
        assert routed is not None
        rates, p50s, cpus = [], [], []
        for _ in range(self.plan.runs):
            keys = pick()
            meter = CpuMeter(pids)
            r = await self.load(routed.turn, keys, in_flight=in_flight, meter=meter)
            latency = await self.load(routed.turn, keys, in_flight=1, latency=True)
            rates.append(r.rate)
            p50s.append(latency.p50_ms)
            cpus.append(1000 * meter.used.get("router", math.nan) / max(r.completed, 1))
        return rates, p50s, cpus

    async def history_section(self) -> None:
        """Redis memory of one session after 10 and 100 messages, history included."""
        routed = self.routed
        assert routed is not None
        keep = "router default" if self.history is None else str(self.history)
        for turns in (1, 10, 100):
            session = f"history-{turns}"
            for _ in range(turns):
                await routed.turn(session)
            size = await routed.session_bytes(session)
            self.say(f"session after {turns} messages: {size:,} B (--history {keep})")
            self.add(f"session_bytes_{turns}_turns", f"Redis MEMORY USAGE of a session after "
                     f"{turns} messages (--history {keep})", "B", [size],
                     note="record, outbox, dedup and history keys; one measurement")

    async def embedded_section(self) -> None:
        """Turns per second fully in process (memory broker and store)."""
        plan = self.plan
        self.embedded = Embedded(self.ns + "e")
        await self.embedded.start()
        keys = [f"e{i:04d}" for i in range(plan.sessions)]
        await run_all(self.embedded.turn, keys, concurrency=plan.in_flight, timeout=60)
        rates, p50 = [], []
        for _ in range(plan.runs):
            r = await self.load(self.embedded.turn, keys, in_flight=plan.in_flight)
            lat = await self.load(self.embedded.turn, keys, in_flight=1, latency=True)
            rates.append(r.rate)
            p50.append(lat.p50_ms)
        self.say(f"embedded: {Summary.of(rates).median:.0f} turns/s")
        self.add("embedded_throughput", f"embedded turns/s ({plan.in_flight} in flight)",
                 "1/s", rates)
        self.add("embedded_p50", "embedded p50 (1 in flight)", "ms", p50)
        await self.embedded.stop()
        self.embedded = None

    async def profile_section(self) -> None:
        """py-spy on the router, then on the worker, each under the throughput load."""
        routed, plan = self.routed, self.plan
        assert routed is not None and routed.router is not None and routed.worker is not None
        await self.warm_main()
        outdir = Path(tempfile.gettempdir()) / "cloudbunch-bench"
        outdir.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name, proc in (("router", routed.router), ("worker", routed.worker)):
            out = outdir / f"profile-{name}-{stamp}.txt"
            spy = await pyspy.record(proc.pid, plan.profile_seconds, out)
            try:
                r = await closed_loop(routed.turn, self.main_keys, in_flight=plan.in_flight,
                                      warmup=0.0, duration=plan.profile_seconds + 0.5)
                code = await asyncio.wait_for(spy.process.wait(), 30)
            finally:
                await spy.stop()
                output = spy.output()
                spy.close()
            if code != 0 or not out.exists():
                raise RuntimeError(f"py-spy failed ({code}): {output}")
            prof = pyspy.parse_raw(out.read_text())
            self.profiles[name] = prof
            self.report.setdefault("profile", {})[name] = {
                "raw_file": str(out), "turns_per_s_while_sampled": r.rate, **prof.to_json()}
            self.say(f"profiled {name} for {plan.profile_seconds:.0f} s at {r.rate:.0f} "
                     f"turns/s: {out}")


# ---------------------------------------------------------------------- machine and output


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "kernel": platform.release(),
                            "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        info["memory_gb"] = round(int(first.split()[1]) / 1024 / 1024, 1)
    for dist in ("aio-pika", "aiormq", "redis", "msgpack", "uvloop", "msgspec"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[dist] = importlib.metadata.version(dist)
    with contextlib.suppress(Exception):
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                        capture_output=True, text=True,
                                        timeout=5).stdout.strip()
    return info


def message_sizes() -> dict[str, int]:
    """Bytes of each message of one routed turn (and so of the baseline's two)."""
    from .direct import answer_body, request_body
    from .services import PAYLOAD, state

    session, ident = "s0123", secrets.token_urlsafe(16)
    client = wire.ClientMessage(session, ident, "benchxxxxxxxx.client.xxxxxxxxxxxx",
                                payload=PAYLOAD, seq=12)
    dispatch = request_body(session, ident, 11)
    reply = answer_body({"session": session, "turn": ident, "state": state(11),
                         "payload": PAYLOAD})
    notice = wire.Notice(session, ident, ident, "output", PAYLOAD)
    return {"client_message": len(wire.encode(client.to_wire())), "dispatch": len(dispatch),
            "reply": len(reply), "notice": len(wire.encode(notice.to_wire())),
            "direct_request": len(dispatch), "direct_answer": len(reply)}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def save(report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(report["started"]))
    path = RESULTS / f"{stamp}.json"
    text = json.dumps(report, indent=2, sort_keys=False) + "\n"
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    return path


async def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    sections = tuple(s for s in SECTIONS if s in args.only) if args.only else \
        DEFAULT_SECTIONS
    bench = Bench(plan, sections, args.amqp_url, args.redis_url, args.queue_type, args.profile,
                  history=args.history,
                  process_args=("--metrics-port", "0") if args.metrics else ())
    bench.report.update({"started": time.time(), "namespace": bench.ns, "quick": args.quick,
                         "plan": dataclasses.asdict(plan), "sections": list(sections),
                         "queue_type": args.queue_type, "history": args.history,
                         "metrics": args.metrics,
                         "machine": machine(),
                         "message_bytes": message_sizes(),
                         "loadavg_start": _loadavg()})
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    began = time.monotonic()
    try:
        async with asyncio.timeout(plan.limit):
            await bench.start()
            if "pair" in sections:
                await bench.pair()
            if "depth" in sections:
                await bench.depth_section()
            if "sessions" in sections:
                await bench.sessions_section()
            if "history" in sections:
                await bench.history_section()
            if "embedded" in sections:
                await bench.embedded_section()
            if "growth" in sections:
                await bench.growth_section()
            if "replicas" in sections:
                await bench.replicas_section()
            if args.profile:
                await bench.profile_section()
    except TimeoutError:
        bench.say(f"stopped: the bench exceeded its {plan.limit:.0f} s bound")
        raise
    finally:
        bench.say("cleaning up (processes, queues, keys)")
        await bench.stop()
    bench.add("others_load", "CPUs used by other processes in the windows", "CPUs",
              [v for v in bench.others if not math.isnan(v)],
              note="all busy CPU time minus the bench's processes and the servers; a "
                   "shared machine makes every figure noisier")
    bench.report["loadavg_end"] = _loadavg()
    bench.report["seconds"] = round(time.monotonic() - began, 1)
    bench.report["figures"] = {f.key: f.to_json() for f in bench.figures}
    path = save(bench.report)
    m = bench.report["machine"]
    print(f"CloudBunch bench ({'quick, ' if args.quick else ''}{plan.runs} run(s), median and "
          f"range) on {m.get('nproc')} CPUs, RabbitMQ "
          f"{bench.report.get('rabbitmq', {}).get('version', '?')}, Redis "
          f"{bench.report.get('redis', {}).get('redis_version', '?')}, {args.queue_type} "
          "queues, persistent messages, publisher confirms")
    print(format_table(bench.figures))
    if args.markdown:
        print()
        print(format_markdown(bench.figures))
    for name, prof in bench.profiles.items():
        print()
        print(pyspy.format_profile(f"profile of the {name} process", prof))
    print(f"\nresults: {path.relative_to(REPO)} (and bench/results/latest.json); "
          f"{bench.report['seconds']:.0f} s")
    return 0


def _router_stats(outputs: dict[str, str]) -> Counter[str]:
    """The counters the routers of a deployment logged as they stopped, summed."""
    total: Counter[str] = Counter()
    for name, text in outputs.items():
        if not name.startswith("router"):
            continue
        for line in text.splitlines():
            if "event=router_stopped" in line:
                for key, value in re.findall(r"(\w+)=(\d+)", line):
                    total[key] += int(value)
    return total


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part.replace("_", "")) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if not counts or min(counts) < 1000:
        raise argparse.ArgumentTypeError("each count must be at least 1000 (the sessions the "
                                         "throughput runs sample)")
    return counts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="short windows, 1 run, 10,000 idle sessions: a smoke run (< 1 min)")
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help="runs per figure (median and range reported) [default 3; 1 quick]")
    p.add_argument("--only", type=lambda s: tuple(s.split(",")), default=None,
                   metavar="LIST",
                   help=f"comma-separated sections of {', '.join(SECTIONS)} [default: all "
                        "but growth and replicas]")
    p.add_argument("--profile", action="store_true",
                   help="then sample the router and the worker with py-spy under load")
    p.add_argument("--markdown", action="store_true",
                   help="also print the table as Markdown (docs/benchmarks.md)")
    p.add_argument("--window", type=float, default=None, metavar="S",
                   help="seconds each throughput window lasts [default 4; 1.5 quick]")
    p.add_argument("--in-flight", type=int, default=200, metavar="N",
                   help="requests in flight in throughput runs [default 200]")
    p.add_argument("--sessions", type=int, default=None, metavar="N",
                   help="idle sessions for the memory figure [default 100,000; 10,000 quick]")
    p.add_argument("--growth", type=_counts, default=None, metavar="LIST",
                   help="idle-session counts of the growth section [default 10000,100000,"
                        "1000000; 2000,10000 quick]")
    p.add_argument("--depth", type=int, default=30, metavar="N",
                   help="frames on the deep stacks [default 30]")
    p.add_argument("--queue-type", default="quorum", choices=("quorum", "classic"),
                   help="type of the shared queues, routed and direct alike [default quorum]")
    p.add_argument("--limit", type=float, default=None, metavar="S",
                   help="stop (and clean up) after this many seconds [default 600; 150 quick]")
    p.add_argument("--metrics", action="store_true",
                   help="router and worker serve Prometheus metrics (--metrics-port 0), to "
                        "measure what metrics cost")
    p.add_argument("--history", type=int, default=None, metavar="N",
                   help="the router's --history (history entries per session) [default: the "
                        "router's default]; compare CPU per turn with 0")
    p.add_argument("--amqp-url", default=os.environ.get("CLOUDBUNCH_AMQP_URL",
                                                        DEFAULT_AMQP_URL))
    p.add_argument("--redis-url", default=os.environ.get("CLOUDBUNCH_REDIS_URL",
                                                         DEFAULT_REDIS_URL))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = set(args.only or ()) - set(SECTIONS)
    if unknown:
        print(f"python -m bench: unknown section(s) {', '.join(sorted(unknown))}",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        runner: Callable[[Any], int] = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(run(args))
    except KeyboardInterrupt:
        return 130
    except (TimeoutError, asyncio.CancelledError):
        return 1
