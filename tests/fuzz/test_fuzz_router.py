"""Fuzz a real router process with hostile bodies while normal conversations go on.

Guarantee 8: every bad body is dead-lettered (reason, one-line detail, source queue) and
acknowledged; addressed bad client messages get an ``invalid_message`` notice; replies for
turns not in flight are dropped, never dead-lettered; the router neither crashes nor stalls.
Set CLOUDBUNCH_FUZZ_SEED to replay a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import msgpack
import pytest
import redis.asyncio as aioredis
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from harness.processes import Proc, child_env
from router.store import DEFAULT_REDIS_URL
from worker_sdk import AmqpBroker, Client, Context, Service, wire

from . import bodies as B

pytestmark = pytest.mark.infra

MAX_BODY = 4096
BODIES = 10_000
SESSIONS = 50
TURNS = 5
BACKLOG = 120
"""Publishing pauses while the router's two queues hold more than this many messages: a real
reply queued behind a long flood would miss its turn's deadline (1 s, 3 attempts)."""
SPREAD_S = 25.0
"""Conversations start at random times over this span, so they interleave with the flood."""


def unpack(body: bytes) -> Any:
    return msgpack.unpackb(body, raw=False)


@dataclass
class Stack:
    """A router process, an in-process echo service, a client and a raw connection."""

    namespace: str
    amqp_url: str
    redis_url: str
    router: Proc | None = None
    connection: AbstractConnection | None = None
    channel: AbstractChannel | None = None
    service_broker: AmqpBroker | None = None
    client_broker: AmqpBroker | None = None
    client: Client | None = None
    turns: dict[tuple[str, int], str] = field(default_factory=dict)
    """(session, n) -> the turn that produced the session's n-th echo."""
    queues: set[str] = field(default_factory=set)

    def q(self, name: str) -> str:
        return f"{self.namespace}.{name}"

    def output(self) -> str:
        return self.router.output() if self.router is not None else ""

    async def start(self, *router_args: str) -> None:
        self.queues |= {self.q("ingress"), self.q("replies"), self.q("dead"),
                        self.q("service.echo")}
        env = child_env(CLOUDBUNCH_AMQP_URL=self.amqp_url, CLOUDBUNCH_REDIS_URL=self.redis_url)
        self.router = await Proc.python(
            "router", "-m", "router.cli", "router", "--namespace", self.namespace,
            "--root", "echo", "--turn-timeout", "1", "--seq-hold", "0.5", *router_args, env=env)
        self.connection = await aio_pika.connect(self.amqp_url)
        self.channel = await self.connection.channel(publisher_confirms=True)
        deadline = time.monotonic() + 20
        while "event=router_started" not in self.output():
            assert self.router.returncode is None, f"router exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"router did not start:\n{self.output()}"
            await asyncio.sleep(0.05)
        self.service_broker = AmqpBroker(self.amqp_url, name="fuzz-echo")
        await self.service_broker.connect()
        await self.echo_service().serve(self.service_broker, self.namespace, prefetch=64)
        self.client_broker = AmqpBroker(self.amqp_url, name="fuzz-client")
        await self.client_broker.connect()
        self.client = Client(self.client_broker, self.namespace)
        await self.client.start()

    def echo_service(self) -> Service:
        echo = Service("echo")

        def answer(ctx: Context) -> None:
            n = 1 if ctx.event == "start" else int(ctx.state["n"]) + 1
            self.turns[(ctx.session, n)] = ctx.turn
            ctx.reply({"n": n, "echo": ctx.payload}, state={"n": n, "last": ctx.payload})

        echo.on_start(answer)
        echo.on_message(answer)
        return echo

    async def own_queue(self, suffix: str) -> str:
        assert self.channel is not None
        name = self.q(f"fuzz.{suffix}")
        await self.channel.declare_queue(name, auto_delete=False)
        self.queues.add(name)
        return name

    async def publish(self, queue: str, body: bytes) -> None:
        assert self.channel is not None
        await self.channel.default_exchange.publish(
            aio_pika.Message(body, content_type=wire.CONTENT_TYPE,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                             message_id=secrets.token_hex(8)),
            routing_key=queue, mandatory=True)

    async def depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (a passive declare, on a channel of its own)."""
        assert self.connection is not None
        channel = await self.connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await channel.close()

    def alive(self) -> bool:
        return self.router is not None and self.router.returncode is None

    async def stop_router(self) -> int:
        assert self.router is not None
        return await self.router.stop(timeout=12)

    async def close(self) -> None:
        if self.router is not None and self.router.returncode is None:
            self.router.kill()
            await self.router.process.wait()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        for broker in (self.client_broker, self.service_broker):
            if broker is not None:
                with contextlib.suppress(Exception):
                    await broker.close()
        if self.connection is not None:
            channel = await self.connection.channel()
            for queue in sorted(self.queues):
                with contextlib.suppress(Exception):
                    await channel.queue_delete(queue)
            for exchange in wire.exchange_names(self.namespace).values():
                with contextlib.suppress(Exception):
                    await channel.exchange_delete(exchange)
            await self.connection.close()
        store = aioredis.from_url(self.redis_url)
        try:
            keys = [k async for k in store.scan_iter(match=f"{self.namespace}:*", count=1000)]
            if keys:
                await store.delete(*keys)
        finally:
            await store.aclose()
        if self.router is not None:
            self.router.close()


@pytest.fixture
async def stack(namespace: str, amqp_url: str) -> AsyncIterator[Stack]:
    redis_url = os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL)
    made = Stack(namespace, amqp_url, redis_url)
    try:
        yield made
    finally:
        await made.close()


class Collector:
    """Consumes one queue into a list (acked at once)."""

    def __init__(self) -> None:
        self.items: list[AbstractIncomingMessage] = []
        self.changed = asyncio.Event()

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        self.items.append(message)
        self.changed.set()

    async def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while len(self.items) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
        return True


async def collect(stack: Stack, queue: str) -> Collector:
    assert stack.connection is not None
    channel = await stack.connection.channel()
    await channel.set_qos(prefetch_count=500)
    collector = Collector()
    declared = await channel.declare_queue(queue, passive=True)
    await declared.consume(collector)
    return collector


def one_line(text: Any) -> bool:
    return isinstance(text, str) and bool(text) and len(text.splitlines()) == 1


# ---------------------------------------------------------------------------- the big run


async def test_router_contains_fuzzed_bodies_and_keeps_serving(stack: Stack) -> None:
    seed = int(os.environ.get("CLOUDBUNCH_FUZZ_SEED") or secrets.randbits(32))
    print(f"fuzz seed {seed} (CLOUDBUNCH_FUZZ_SEED={seed} replays it)")
    rng = random.Random(seed)
    started = time.monotonic()
    await stack.start("--max-body", str(MAX_BODY))
    ingress, replies, dead = stack.q("ingress"), stack.q("replies"), stack.q("dead")
    notices_q = await stack.own_queue("notices")
    dead_letters = await collect(stack, dead)
    bad_notices = await collect(stack, notices_q)

    real = [f"real:{i}:{secrets.token_hex(3)}" for i in range(SESSIONS)]
    gen = B.Generator(rng, MAX_BODY, notices_q, real_sessions=real)
    cases = [gen.ingress() if i % 2 else gen.reply() for i in range(BODIES)]
    sent: list[B.Case] = []
    stale: list[B.Case] = []
    failures: list[str] = []

    async def flood() -> None:
        for at in range(0, len(cases), 100):
            while (await stack.depth(ingress)) + (await stack.depth(replies)) > BACKLOG:
                await asyncio.sleep(0.02)
            chunk = cases[at:at + 100]
            await asyncio.gather(*(stack.publish(ingress if c.queue == "ingress" else replies,
                                                 c.body) for c in chunk))
            sent.extend(chunk)
            await asyncio.sleep(0.01)

    async def converse(session: str) -> None:
        assert stack.client is not None
        await asyncio.sleep(rng.random() * SPREAD_S)
        for n in range(1, TURNS + 1):
            await asyncio.sleep(rng.random())
            payload = {"say": f"{session}#{n}", "x": B.rand_value(random.Random(n), 2)}
            got = await stack.client.conversation(session, payload, timeout=15, settle=0.2)
            want = [("output", {"n": n, "echo": payload})]
            if [(x.type, x.payload) for x in got] != want:
                seen = [(x.type, x.payload, x.error) for x in got]
                failures.append(f"{session} turn {n}: {seen}")
                return
            turn = stack.turns[(session, n)]
            case = gen.stale(session, turn)
            await stack.publish(replies, case.body)
            stale.append(case)

    await asyncio.gather(flood(), *(converse(s) for s in real))
    publish_s = time.monotonic() - started

    every = sent + stale
    expect_dead: dict[tuple[str, bytes], list[frozenset[str]]] = defaultdict(list)
    for case in every:
        if case.verdict.reasons:
            expect_dead[(stack.q(case.queue), case.body)].append(case.verdict.reasons)
    dead_due = sum(len(v) for v in expect_dead.values())
    notices_due = Counter((c.session, c.in_reply_to) for c in every if c.verdict.notice)
    echoes_due = {c.session: c.echo for c in every if c.echo is not None}
    drops_due = sum(1 for c in every if c.verdict.drop)

    # The router must still answer promptly after the flood.
    assert stack.alive(), stack.output()[-3000:]
    assert stack.client is not None
    last = time.monotonic()
    got = await stack.client.conversation("fuzz:last", "last", timeout=5, settle=0.1)
    last_s = time.monotonic() - last
    assert [(x.type, x.payload) for x in got] == [("output", {"n": 1, "echo": "last"})], got

    await dead_letters.wait_for(dead_due, 20)
    await bad_notices.wait_for(sum(notices_due.values()) + len(echoes_due), 10)
    await asyncio.sleep(0.5)  # anything extra shows up too

    problems: list[str] = list(failures)
    # Dead letters: each expected body exactly once, reason allowed, headers complete.
    wrong = Counter[str]()
    for message in dead_letters.items:
        headers = message.headers or {}
        source = headers.get("x-cb-source-queue")
        reason = headers.get("x-cb-reason")
        detail = headers.get("x-cb-detail")
        options = expect_dead.get((str(source), message.body))
        if not options:
            kind = next((c.kind for c in every if c.body == message.body), "?")
            wrong[f"unexpected dead letter ({kind}, {reason}: {detail!r:.120})"] += 1
            continue
        allowed = options.pop()
        if reason not in allowed:
            wrong[f"reason {reason} not in {sorted(allowed)} ({detail!r:.120})"] += 1
        if not one_line(detail):
            wrong[f"x-cb-detail not one line: {detail!r:.120}"] += 1
    missing = [(q, body[:60]) for (q, body), left in expect_dead.items() for _ in left]
    problems += [f"{n} x {what}" for what, n in wrong.items()]
    if missing:
        problems.append(f"{len(missing)} bad bodies never dead-lettered, e.g. {missing[:5]}")

    # Notices on our own queue: invalid_message for addressed bad messages, echoes for the
    # valid oddities (repeated keys, astral session ids).
    got_notices: Counter[tuple[str, str]] = Counter()
    got_echoes: dict[str, Any] = {}
    for message in bad_notices.items:
        notice = wire.Notice.from_wire(wire.decode(message.body))
        if notice.type == "error" and notice.error and notice.error.code == "invalid_message":
            got_notices[(notice.session, notice.in_reply_to)] += 1
            if not one_line(notice.error.message):
                problems.append(f"error notice message not one line: {notice.error.message!r}")
        elif notice.type == "output":
            got_echoes[notice.session] = notice.payload
        else:
            problems.append(f"unexpected notice {notice}")
    if got_notices != notices_due:
        problems.append(f"invalid_message notices: missing {notices_due - got_notices}, "
                        f"extra {got_notices - notices_due}")
    for session, echo in echoes_due.items():
        if got_echoes.get(session) != {"n": 1, "echo": echo}:
            problems.append(f"valid odd message of {session!r:.40} got {got_echoes.get(session)}")

    # Stop the router: what it still held would be handed back and show in the queues.
    alive_at_end = stack.alive()
    code = await stack.stop_router()
    left = {q: await stack.depth(q) for q in (ingress, replies)}
    stats = dict(re.findall(r"(\w+)=(\d+)", next(
        (line for line in stack.output().splitlines() if "event=router_stopped" in line), "")))
    dropped = int(stats.get("replies_dropped", 0))
    elapsed = time.monotonic() - started
    kinds = Counter(f"{c.queue}:{c.kind}" for c in every)
    print(f"fuzz: sent {len(every)} bodies in {publish_s:.1f} s "
          f"({', '.join(f'{k}={n}' for k, n in sorted(kinds.items()))}); "
          f"dead-lettered {len(dead_letters.items)}/{dead_due} expected; "
          f"notices {sum(got_notices.values())}/{sum(notices_due.values())}; "
          f"dropped {dropped} (>= {drops_due} expected); last message answered in "
          f"{last_s:.2f} s; elapsed {elapsed:.1f} s; seed {seed}")
    assert alive_at_end and code == 0, stack.output()[-3000:]
    assert left == {ingress: 0, replies: 0}, left
    assert dropped >= drops_due, stats
    assert not problems, "\n".join(problems[:40])


# ---------------------------------------------------------------------------- focused cases


async def started(stack: Stack, *args: str) -> tuple[str, Collector, Collector]:
    await stack.start(*args)
    notices_q = await stack.own_queue("notices")
    return notices_q, await collect(stack, stack.q("dead")), await collect(stack, notices_q)


async def still_serving(stack: Stack) -> None:
    assert stack.alive(), stack.output()[-3000:]
    assert stack.client is not None
    got = await stack.client.conversation("fuzz:probe", "probe", timeout=5, settle=0.1)
    assert [(x.type, x.payload) for x in got] == [("output", {"n": 1, "echo": "probe"})], got
    for queue in (stack.q("ingress"), stack.q("replies")):
        assert await stack.depth(queue) == 0, f"{queue} is not empty"
    code = await stack.stop_router()
    assert code == 0
    for queue in (stack.q("ingress"), stack.q("replies")):
        assert await stack.depth(queue) == 0, f"{queue} held unacked deliveries"


@pytest.mark.parametrize("levels", [300, 480, 500])
async def test_a_valid_message_nested_up_to_512_levels_is_served(stack: Stack,
                                                                 levels: int) -> None:
    # Contract: 512 levels or fewer are always decoded, so such a message is served like any.
    # The echo keeps the payload in its state: the second message makes the router load and
    # step a record that holds it.
    notices_q, dead, notices = await started(stack, "--max-body", "65536")
    body = {"v": 1, "type": "message", "session": "deep", "id": "m1", "reply_to": notices_q}
    await stack.publish(stack.q("ingress"), B.with_field(body, "payload",
                                                         B.nested(levels - 2, b"\x90")))
    await notices.wait_for(1, 8)
    await stack.publish(stack.q("ingress"), B.pack({**body, "id": "m2", "payload": "more"}))
    await notices.wait_for(2, 8)
    kinds = [unpack(m.body)["type"] for m in notices.items]
    assert kinds == ["output", "output"], (kinds, stack.output()[-2000:])
    assert not dead.items
    await still_serving(stack)


@pytest.mark.parametrize("levels", [900, 1000, 1020])
async def test_a_client_message_with_a_deeply_nested_v_is_dead_lettered(stack: Stack,
                                                                        levels: int) -> None:
    # Between 513 and 2,000 levels the router may decode or not, but either way the body is
    # dead-lettered and acknowledged; decoded, it is invalid and gets its notice.
    notices_q, dead, notices = await started(stack, "--max-body", "65536")
    body = {"type": "message", "session": "s", "id": "m1", "reply_to": notices_q}
    await stack.publish(stack.q("ingress"), B.with_field(body, "v", B.nested(levels - 2, b"\x90")))
    assert await dead.wait_for(1, 5), stack.output()[-2000:]
    reason = (dead.items[0].headers or {}).get("x-cb-reason")
    assert reason in ("invalid", "undecodable")
    if reason == "invalid":
        assert await notices.wait_for(1, 5)
    await still_serving(stack)


async def test_a_huge_wrong_field_with_default_max_body_does_not_break_the_router(
        stack: Stack) -> None:
    # With the default max-body (256 KiB) a body under the limit can carry a wrong `v` whose
    # description alone is larger than an AMQP frame (128 KiB) if put in x-cb-detail.
    notices_q, dead, notices = await started(stack)
    body = {"v": "v" * 200_000, "type": "message", "session": "s", "id": "m1",
            "reply_to": notices_q}
    await stack.publish(stack.q("ingress"), B.pack(body))
    assert await dead.wait_for(1, 5), stack.output()[-2000:]
    headers = dead.items[0].headers or {}
    assert headers.get("x-cb-reason") == "invalid"
    assert await notices.wait_for(1, 5)
    await still_serving(stack)
