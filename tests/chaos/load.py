"""The chaos machinery: plans from the model, a frontend that drives them, the router and
worker processes kept at a fixed number of slots, the fault injector, and the checker.

A :class:`Plan` is one session's script and what the model predicts for it. The
:class:`Frontend` is one ``worker_sdk.Client`` (notices deduplicated by id) that also counts
raw arrivals, so copies are visible; it sends with stable ids and ``seq``, and re-sends the
same message after a failed publish (the router deduplicates by id). A session sends its next
message only after every notice the model predicts for the previous one has arrived (or
after a timeout, which the checker then reports). :class:`Cluster` runs ``router.cli``
processes in slots and respawns a slot's process when it is killed; :class:`Faults` kills,
stops and cuts at scheduled instants. :func:`check` compares what arrived with the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from router.core import Record
from tests.integration.procs import QUEUE_TYPE, Harness, Proc, child_env, cli
from worker_sdk import wire
from worker_sdk.amqp import AmqpBroker
from worker_sdk.broker import Delivery, Outgoing
from worker_sdk.client import Client

from .flow import ROOT, SERVICES, SPECS, Expected, Model, script

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- plans


@dataclass
class Plan:
    """One session: its payloads, their ids, the notices and final stack the model predicts."""

    session: str
    payloads: list[str]
    ids: list[str]
    expected: list[list[Expected]]
    final: list[tuple[str, Any]]
    timer: bool = False
    """Whether its messages ask for idle timers (``meta: {"idle": true}``)."""
    idle: list[Expected | None] = field(default_factory=list)
    """Per message: the idle notice that may follow its chain (None: no timer is set)."""

    @property
    def meta(self) -> dict[str, Any] | None:
        return {"idle": True} if self.timer else None


def make_plans(count: int, messages: int, rng: random.Random) -> tuple[list[Plan], Counter[str]]:
    """``count`` sessions of ``messages`` messages; also how often each action occurs."""
    plans: list[Plan] = []
    actions: Counter[str] = Counter()
    for i in range(count):
        # Some ids carry braces and non-ASCII, which must not move a key to another slot.
        session = f"tg:{i}" if i % 10 else f"ws:{{{i}}}\u00e9"
        model = Model(timer=i % 3 == 1)  # a third of the sessions use idle timers
        payloads = script(rng, messages)
        expected: list[list[Expected]] = []
        idle: list[Expected | None] = []
        for payload in payloads:
            expected.append(model.message(payload))
            idle.append(model.idle)
        ids = [f"{session}/{k}/{rng.getrandbits(40):010x}" for k in range(1, messages + 1)]
        plans.append(Plan(session, payloads, ids, expected, model.frames(), model.timer, idle))
        actions.update(model.actions)
    return plans, actions


def is_idle(notice: wire.Notice) -> bool:
    """Whether a notice comes from an idle timer's chain (see ``flow.idle_output``)."""
    return notice.type == "output" and str(notice.payload).startswith("idle: ")


def seen_as(notice: wire.Notice) -> Expected:
    """A received notice in the model's terms."""
    if notice.type in ("output", "unhandled"):
        return (notice.type, notice.payload)
    if notice.type == "error":
        return ("error", notice.error.code if notice.error is not None else None)
    return (notice.type, None)


# ---------------------------------------------------------------------------- frontend


class RecordingClient(Client):
    """A Client that also counts every delivery of a notice, copies included."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raw: Counter[str] = Counter()
        self.undecodable = 0

    async def _on_delivery(self, delivery: Delivery) -> None:
        try:
            self.raw[str(wire.decode(delivery.body).get("id"))] += 1
        except Exception:
            self.undecodable += 1
        await super()._on_delivery(delivery)


class Frontend:
    """One frontend: sends the plans' messages and collects their notices."""

    def __init__(self, harness: Harness, name: str = "chaos-frontend", *,
                 partitions: int = 0) -> None:
        self.harness = harness
        self.broker = AmqpBroker(harness.amqp_url, QUEUE_TYPE, name=f"{name}-{harness.ns}",
                                 connect_timeout=10, give_up_after=300)
        self.client = RecordingClient(self.broker, harness.ns, prefetch=512,
                                      partitions=partitions)
        harness.queues.add(self.client.reply_queue)
        self.by_session: dict[str, list[wire.Notice]] = defaultdict(list)
        """Unique notices (as the client delivers them), per session, in arrival order."""
        self.by_message: dict[str, list[wire.Notice]] = defaultdict(list)
        self.publish_retries = 0
        self.in_flight = 0
        """Messages sent whose chains have not finished yet."""
        self.chain_timeouts = 0
        self._arrived: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._collector: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.broker.connect()
        await self.client.start()
        notices = self.client.notices()  # subscribes now: nothing is missed

        async def collect() -> None:
            async for notice in notices:
                self.by_session[notice.session].append(notice)
                self.by_message[notice.in_reply_to].append(notice)
                self._arrived[notice.session].set()

        self._collector = asyncio.create_task(collect(), name="chaos-collector")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.close()
        with contextlib.suppress(Exception):
            await self.broker.close()
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector

    @property
    def copies(self) -> int:
        """Deliveries of notices beyond the first of each id."""
        return sum(n - 1 for n in self.client.raw.values())

    async def send(self, session: str, msg_id: str, payload: str, seq: int,
                   meta: dict[str, Any] | None = None) -> None:
        """Publish one client message until the broker confirms it (same id on each try)."""
        body = wire.encode(wire.ClientMessage(
            session=session, id=msg_id, reply_to=self.client.reply_queue, payload=payload,
            seq=seq, meta=meta).to_wire())
        message = Outgoing(self.harness.ingress, body, msg_id)
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            try:
                async with asyncio.timeout(10):
                    if await self.broker.publish([message]) == [True]:
                        return
            except Exception as exc:  # a cut connection: the broker may or may not have it
                log.debug("publish of %s failed: %r", msg_id, exc)
            self.publish_retries += 1
            await asyncio.sleep(0.25)
        raise AssertionError(f"the broker did not confirm client message {msg_id!r} in 60 s")

    async def wait(self, session: str, msg_id: str, count: int, timeout: float, *,
                   idle: bool = False) -> bool:
        """Wait until ``count`` notices of ``msg_id`` arrived (of its chain, or with ``idle``
        of the idle timer's chain after it); False after ``timeout`` s."""
        event = self._arrived[session]
        deadline = time.monotonic() + timeout
        while True:
            event.clear()
            if sum(is_idle(n) == idle for n in self.by_message[msg_id]) >= count:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                self.chain_timeouts += 1
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), left)


async def wait_last_timers(front: Frontend, plans: Sequence[Plan], timeout: float) -> None:
    """Wait until every session whose last chain set a timer got its idle notice (a missing
    one is then reported by :func:`check` as lost)."""
    await asyncio.gather(*(front.wait(p.session, p.ids[-1], 1, timeout, idle=True)
                           for p in plans if p.idle and p.idle[-1] is not None))


async def drive(front: Frontend, plans: Sequence[Plan], rng: random.Random, *,
                spread: float, think: tuple[float, float], chain_timeout: float) -> None:
    """Run every plan: start within ``spread`` s, think between messages, one chain at a time
    per session (the next message goes out when the previous chain's notices are in)."""
    async def one(plan: Plan, start: float, pauses: list[float]) -> None:
        await asyncio.sleep(start)
        for k, (payload, msg_id, exp) in enumerate(
                zip(plan.payloads, plan.ids, plan.expected, strict=True), start=1):
            front.in_flight += 1
            await front.send(plan.session, msg_id, payload, k, plan.meta)
            await front.wait(plan.session, msg_id, len(exp), chain_timeout)
            front.in_flight -= 1
            await asyncio.sleep(pauses[k - 1])

    await asyncio.gather(*(one(p, rng.uniform(0, spread),
                               [rng.uniform(*think) for _ in p.payloads]) for p in plans))


# ---------------------------------------------------------------------------- processes


def peek(proc: Proc) -> str:
    """A process's output so far (``Proc.output`` reads it without moving the file offset
    it shares with the child)."""
    return proc.output()


@dataclass
class Slot:
    """A place for one process; a killed process is replaced in its slot."""

    name: str
    argv: list[str]
    queues: list[str]
    proc: Proc | None = None
    generation: int = 0


@dataclass
class Cluster:
    """The router and worker processes of one namespace."""

    harness: Harness
    router_options: dict[str, Any] = field(default_factory=dict)
    sleep: float = 0.005
    slots: list[Slot] = field(default_factory=list)
    retired: list[Proc] = field(default_factory=list)
    """Processes sent SIGTERM: each must exit 0 within 10 s."""
    unexpected: list[str] = field(default_factory=list)
    """Processes that exited without being killed: name, code and the end of their output."""
    frozen: set[str] = field(default_factory=set)
    """Slots whose process is stopped (SIGSTOP) for a while: no other fault touches them."""
    _thaws: set[asyncio.Task[None]] = field(default_factory=set)

    def add_router(self) -> None:
        h = self.harness
        argv = cli("router", "--namespace", h.ns, "--root", ROOT, "--queue-type", QUEUE_TYPE,
                   "--amqp-url", h.amqp_url, "--redis-url", h.redis_url)
        for name, value in self.router_options.items():
            argv += ["--" + name.replace("_", "-"), str(value)]
        self.slots.append(Slot(f"router{len(self.slots)}", argv, [h.ingress, h.replies]))

    def add_worker(self, services: Sequence[str], prefetch: int = 16) -> None:
        h = self.harness
        queues = [f"{h.ns}.service.{s}" for s in services]
        h.queues.update(queues)
        argv = cli("worker", *(SPECS[s] for s in services), "--namespace", h.ns,
                   "--queue-type", QUEUE_TYPE, "--amqp-url", h.amqp_url,
                   "--prefetch", str(prefetch))
        self.slots.append(Slot(f"worker{len(self.slots)}-{'+'.join(services)}", argv, queues))

    def expected_consumers(self) -> Counter[str]:
        """Each queue's consumer count when every slot's process consumes."""
        want: Counter[str] = Counter()
        for slot in self.slots:
            want.update(slot.queues)
        return want

    async def spawn(self, slot: Slot) -> None:
        slot.generation += 1
        env = child_env(CHAOS_SLEEP=str(self.sleep))
        proc = await Proc.spawn(f"{slot.name}.{slot.generation}", slot.argv, env)
        self.harness.procs.append(proc)
        slot.proc = proc

    async def start(self, timeout: float = 40.0) -> None:
        """Start every slot's process at once; wait until all of them consume."""
        await asyncio.gather(*(self.spawn(s) for s in self.slots))
        await self.wait_consumers(timeout)

    async def wait_consumers(self, timeout: float, extra: dict[str, int] | None = None
                             ) -> float:
        """Wait until every queue (and each of ``extra``) has exactly the expected consumers;
        return how long that took."""
        want = dict(self.expected_consumers()) | (extra or {})
        started = time.monotonic()
        have: dict[str, int] = {}
        while True:
            self.check_exits()
            try:
                have = {q: await self.harness.consumers(q) for q in want}
            except Exception:  # our own connection was cut too: open another
                await self.harness.reopen()  # type: ignore[attr-defined]
                continue
            if have == want:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"consumers did not come back within {timeout} s: "
                                     f"have {have}, want {want}")
            await asyncio.sleep(0.2)

    def ready(self, slot: Slot) -> bool:
        """Whether the slot's process has started consuming (by what it logged)."""
        if slot.proc is None or slot.proc.returncode is not None:
            return False
        out = peek(slot.proc)
        if slot.name.startswith("router"):
            return "cloudbunch router: consuming" in out
        return out.count("event=service_serving") >= len(slot.queues)

    def redispatches(self) -> int:
        """Re-dispatched turns (attempt > 1) answered by the workers (they log each one)."""
        return sum(peek(p).count("event=chaos_redispatch") for p in self.harness.procs)

    def check_exits(self) -> list[Slot]:
        """Slots whose process exited on its own (recorded in ``unexpected``)."""
        dead = []
        for slot in self.slots:
            proc = slot.proc
            if proc is not None and proc.returncode is not None:
                tail = "\n".join(proc.output().splitlines()[-15:])
                self.unexpected.append(f"{proc.name} exited {proc.returncode}:\n{tail}")
                slot.proc = None
                dead.append(slot)
        return dead

    async def respawn_exited(self) -> None:
        for slot in self.check_exits():
            await self.spawn(slot)

    async def kill9(self, slot: Slot) -> None:
        """kill -9 the slot's process and start a replacement."""
        assert slot.proc is not None
        slot.proc.kill()
        await slot.proc.process.wait()
        await self.spawn(slot)

    async def sigterm(self, slot: Slot) -> None:
        """SIGTERM (a rolling restart): the replacement starts while the old one drains."""
        assert slot.proc is not None
        old = slot.proc
        with contextlib.suppress(ProcessLookupError):
            old.process.send_signal(signal.SIGTERM)
        self.retired.append(old)
        await self.spawn(slot)

    async def freeze(self, slot: Slot, seconds: float) -> None:
        """SIGSTOP the slot's process and SIGCONT it ``seconds`` later (a long GC pause, a
        stalled VM): longer than the turn timeout, its turns are dispatched again elsewhere
        and its late replies must be fenced off."""
        proc = slot.proc
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)
        self.frozen.add(slot.name)

        async def thaw() -> None:
            await asyncio.sleep(seconds)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
            self.frozen.discard(slot.name)

        task = asyncio.create_task(thaw())
        self._thaws.add(task)
        task.add_done_callback(self._thaws.discard)

    async def thaw_all(self) -> None:
        await asyncio.gather(*self._thaws)

    async def stop(self) -> dict[str, int]:
        """SIGTERM every process; return the router stats summed over those that stopped
        cleanly (each logs them when it stops)."""
        live = [s.proc for s in self.slots if s.proc is not None]
        await asyncio.gather(*(p.stop() for p in live + self.retired))
        stats: Counter[str] = Counter()
        for proc in self.harness.procs:
            for line in proc.output().splitlines():
                if "event=router_stopped" in line:
                    stats.update({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)})
        return dict(stats)

    def unclean_stops(self) -> list[str]:
        """SIGTERM'd processes that did not exit 0."""
        return [f"{p.name} exited {p.returncode}:\n" + "\n".join(p.output().splitlines()[-15:])
                for p in self.retired if p.returncode != 0]


def standard_cluster(harness: Harness, routers: int = 3, **router_options: Any) -> Cluster:
    """``routers`` routers and three worker processes per service (four processes in all,
    two of them serving every service)."""
    cluster = Cluster(harness, router_options)
    for _ in range(routers):
        cluster.add_router()
    cluster.add_worker(SERVICES)
    cluster.add_worker(SERVICES)
    cluster.add_worker(("top", "mid"))
    cluster.add_worker(("leaf", "alt"))
    return cluster


# ---------------------------------------------------------------------------- faults


async def close_all_connections(reason: str = "chaos") -> None:
    """Close every client connection from the broker side."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", "close_all_connections", reason,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"rabbitmqctl close_all_connections failed: {err.decode()}")


async def kill_redis_clients(redis_url: str) -> int:
    """``CLIENT KILL TYPE normal`` from a connection of its own (spared, then closed)."""
    redis = Redis.from_url(redis_url)
    try:
        return int(await redis.client_kill_filter(_type="normal", skipme=True))
    finally:
        await redis.aclose()


@dataclass
class Faults:
    """Executes a schedule of faults: kill9, sigterm, freeze, amqp (cut), redis (cut)."""

    cluster: Cluster
    rng: random.Random
    freeze_s: float = 3.0
    counts: Counter[str] = field(default_factory=Counter)
    journal: list[str] = field(default_factory=list)

    async def run(self, schedule: Sequence[tuple[float, str]], t0: float) -> None:
        for at, kind in schedule:
            await self.cluster.respawn_exited()
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.inject(kind, t0)
        await self.cluster.thaw_all()
        await self.cluster.respawn_exited()

    async def inject(self, kind: str, t0: float) -> None:
        harness = self.cluster.harness
        what = kind
        if kind in ("kill9", "sigterm", "freeze"):
            cluster = self.cluster
            slots = [s for s in cluster.slots if s.proc is not None and s.name not in
                     cluster.frozen]
            if kind != "kill9":
                # A process still importing has no signal handler yet and would die of
                # SIGTERM: a rolling restart (and a pause) hits processes that run.
                for _ in range(100):
                    slots = [s for s in slots if cluster.ready(s)]
                    if slots:
                        break
                    await asyncio.sleep(0.1)
                    slots = [s for s in cluster.slots if s.proc is not None and s.name not in
                             cluster.frozen]
            slot = self.rng.choice(slots)
            what = f"{kind} {slot.proc.name if slot.proc else '?'}"
            if kind == "kill9":
                await cluster.kill9(slot)
            elif kind == "sigterm":
                await cluster.sigterm(slot)
            else:
                await cluster.freeze(slot, self.freeze_s)
        elif kind == "amqp":
            await close_all_connections()
            await harness.reopen()  # type: ignore[attr-defined]
        elif kind == "redis":
            what = f"redis ({await kill_redis_clients(harness.redis_url)} clients)"
        else:
            raise ValueError(kind)
        self.counts[kind] += 1
        self.journal.append(f"{time.monotonic() - t0:6.1f}s {what}")

    @property
    def kills(self) -> int:
        return self.counts["kill9"] + self.counts["sigterm"]

    @property
    def cuts(self) -> int:
        return self.counts["amqp"] + self.counts["redis"]


def make_schedule(rng: random.Random, window: tuple[float, float],
                  kinds: dict[str, int]) -> list[tuple[float, str]]:
    """``kinds[k]`` faults of each kind at random instants within ``window``, in time order."""
    todo = [k for k, n in kinds.items() for _ in range(n)]
    rng.shuffle(todo)
    times = sorted(rng.uniform(*window) for _ in todo)
    return list(zip(times, todo, strict=True))


# ---------------------------------------------------------------------------- checks


@dataclass
class Figures:
    """The outcome of one run, against the model."""

    sessions: int = 0
    messages: int = 0
    kills: int = 0
    cuts: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    corrupted: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        head = (f"sessions={self.sessions} messages={self.messages} kills={self.kills} "
                f"connection_cuts={self.cuts} lost={self.lost} duplicated={self.duplicated} "
                f"out_of_order={self.out_of_order} corrupted={self.corrupted}")
        return " ".join([head, *(f"{k}={v}" for k, v in self.extra.items())])

    @property
    def bad(self) -> int:
        return self.lost + self.duplicated + self.out_of_order + self.corrupted


def check(plans: Sequence[Plan], front: Frontend, stacks: dict[str, list[tuple[str, Any]]],
          figures: Figures, *, only: bool = True) -> None:
    """Compare the notices and final stacks with the model; count into ``figures``.

    With ``only``, a notice for a session that is not among ``plans`` counts as corrupted.
    """
    figures.sessions = len(plans)
    figures.messages = sum(len(p.ids) for p in plans)
    known = {p.session for p in plans}
    for session, notices in front.by_session.items():
        if only and session not in known:
            figures.corrupted += len(notices)
            figures.problems.append(f"{len(notices)} notices for unknown session {session!r}")
    for plan in plans:
        index = {mid: k for k, mid in enumerate(plan.ids)}
        arrived = front.by_session.get(plan.session, [])
        strays = [n for n in arrived if n.in_reply_to not in index]
        if strays:
            figures.corrupted += len(strays)
            figures.problems.append(f"{plan.session}: notices of unknown messages {strays!r}")
        unordered = False
        for k, (msg_id, exp) in enumerate(zip(plan.ids, plan.expected, strict=True)):
            check_idle(plan, k, [seen_as(n) for n in arrived
                                 if n.in_reply_to == msg_id and is_idle(n)], figures)
            got = [seen_as(n) for n in arrived if n.in_reply_to == msg_id and not is_idle(n)]
            if got == exp:
                continue
            where = f"{plan.session} message {k + 1} {plan.payloads[k]!r}"
            if len(got) < len(exp) and got == exp[:len(got)]:
                figures.lost += 1
                figures.problems.append(f"lost: {where}: got {got}, want {exp}")
            elif len(got) > len(exp) and all(g in exp for g in got):
                figures.duplicated += 1
                figures.problems.append(f"duplicated: {where}: got {got}, want {exp}")
            elif sorted(map(repr, got)) == sorted(map(repr, exp)):
                figures.out_of_order += 1
                unordered = True
                figures.problems.append(f"out of order: {where}: got {got}, want {exp}")
            else:
                figures.corrupted += 1
                figures.problems.append(f"corrupted: {where}: got {got}, want {exp}")
        order = [index[n.in_reply_to] for n in arrived if n.in_reply_to in index]
        if not unordered and any(a > b for a, b in itertools.pairwise(order)):
            figures.out_of_order += 1
            figures.problems.append(f"out of order: {plan.session}: chains interleaved {order}")
        stack = stacks.get(plan.session)
        if stack != plan.final:
            figures.corrupted += 1
            figures.problems.append(f"final stack of {plan.session}: {stack}, model says "
                                    f"{plan.final} (payloads {plan.payloads})")


def check_idle(plan: Plan, k: int, got: list[Expected], figures: Figures) -> None:
    """The idle notices after message ``k``: at most the one the model predicts, and
    exactly that one after the last message (the run waits for it)."""
    want = plan.idle[k] if plan.idle else None
    where = f"{plan.session} idle timer after message {k + 1} {plan.payloads[k]!r}"
    if got and (want is None or any(g != want for g in got)):
        figures.corrupted += 1
        figures.problems.append(f"corrupted: {where}: got {got}, want {want or 'none'}")
    elif len(got) > 1:
        figures.duplicated += 1
        figures.problems.append(f"duplicated: {where}: got {got}")
    elif not got and want is not None and k == len(plan.ids) - 1:
        figures.lost += 1
        figures.problems.append(f"lost: {where}: want {want}")


async def read_stacks(harness: Harness, plans: Sequence[Plan],
                      timeout: float = 30.0) -> dict[str, list[tuple[str, Any]]]:
    """Every session's final stack, once every session is idle (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    stacks: dict[str, list[tuple[str, Any]]] = {}
    pending = list(plans)
    while pending:
        busy = []
        for plan in pending:
            snap = await harness.store.load(plan.session)
            rec = Record.decode(snap.record) if snap.record is not None else None
            if (snap.outbox or (rec is not None and (rec.turn or rec.waiting or rec.held))) \
                    and time.monotonic() < deadline:
                busy.append(plan)
                continue
            stacks[plan.session] = [] if rec is None else [(f.service, f.state)
                                                           for f in rec.stack]
        pending = busy
        if pending:
            await asyncio.sleep(0.2)
    return stacks


async def queue_counts(namespace: str) -> dict[str, tuple[int, int, int]]:
    """(ready, unacknowledged, consumers) of every queue of ``namespace``, from rabbitmqctl."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", "list_queues", "name", "messages_ready",
        "messages_unacknowledged", "consumers",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise AssertionError(f"rabbitmqctl list_queues failed: {err.decode()}")
    counts = {}
    for line in out.decode().splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[0].startswith(namespace + ".") and parts[1].isdigit():
            counts[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return counts


async def wait_drained(namespace: str, timeout: float) -> dict[str, tuple[int, int, int]]:
    """Wait until no queue of ``namespace`` but ``NS.dead`` holds a message, ready or
    unacknowledged; return the last counts of the queues that still do (and of dead)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await queue_counts(namespace)
        left = {q: c for q, c in counts.items()
                if (c[0] or c[1]) and not q.endswith(".dead")}
        if not left or time.monotonic() > deadline:
            dead = counts.get(f"{namespace}.dead")
            return left | ({f"{namespace}.dead": dead} if dead and (dead[0] or dead[1]) else {})
        await asyncio.sleep(0.5)
