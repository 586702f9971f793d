"""Metrics and probes of real router and worker processes after a known flow; the Grafana
dashboard's queries name metrics that /metrics really exposes; readiness follows the
router's connections."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.app import Router
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.probes import start_router_probes
from router.redis_store import RedisStore
from router.store import StoreUnavailable
from worker_sdk.amqp import AmqpBroker

from .procs import QUEUE_TYPE, SHARED_ARGS, Harness, Proc, cli, eventually, pack

pytestmark = pytest.mark.infra

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def fetch(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(get, url)


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def port_of(proc: Proc) -> int:
    found: list[int] = []

    def listening() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"{proc.name} exited:\n{proc.output()}")
        found[:] = [int(p) for p in re.findall(r"event=metrics_listening port=(\d+)",
                                               proc.output())]
        return bool(found)

    await eventually(listening, 20, f"{proc.name} serving metrics")
    return found[0]


def exposed_names(text: str) -> set[str]:
    """Every series name /metrics declares, with the suffixes its type gives."""
    names: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if line.startswith("# TYPE") and len(parts) == 4:
            name, kind = parts[2], parts[3]
            base = name.removesuffix("_total")
            names |= {name, base}
            if kind == "counter":
                names.add(base + "_total")
            elif kind == "histogram":
                names |= {base + "_bucket", base + "_sum", base + "_count"}
    return names


async def test_metrics_after_a_known_flow(ops: Harness) -> None:
    h = ops
    router = await h.router(root="greeter", metrics_port=0)
    h.queues.update({f"{h.ns}.service.greeter", f"{h.ns}.service.ask_name"})
    worker = await Proc.spawn("worker", cli(
        "worker", "examples.tutorial:greeter", "examples.tutorial:ask_name", "--namespace",
        h.ns, "--queue-type", QUEUE_TYPE, "--amqp-url", h.amqp_url, "--metrics-port", "0"))
    h.procs.append(worker)
    router_url = f"http://127.0.0.1:{await port_of(router)}"
    worker_url = f"http://127.0.0.1:{await port_of(worker)}"
    await eventually(lambda: h.consumers(f"{h.ns}.service.ask_name"), 20, "the worker")
    assert await fetch(router_url + "/readyz") == (200, "ready\n")
    assert await fetch(worker_url + "/readyz") == (200, "ready\n")
    assert (await fetch(worker_url + "/healthz"))[0] == 200

    front = await h.frontend()
    first = await front.send("s1", "hi")
    assert await front.outputs(first, 1) == ["Hello! What is your name?"]
    second = await front.send("s1", "ada")
    assert await front.outputs(second, 1) == ["Nice to meet you, Ada!"]
    third = await front.send("s1", "bye")
    assert [n["type"] for n in await front.wait(third, 1)] == ["end"]
    # A reply for no turn in flight (fenced) and a client message of another version.
    await h.publish(h.replies, pack({"v": 1, "session": "s1", "turn": "x" * 22,
                                     "action": "reply"}))
    await h.publish(h.ingress, pack({"v": 2, "type": "message", "session": "s2", "id": "a",
                                     "reply_to": front.queue}))

    async def router_metrics() -> Samples:
        return samples((await fetch(router_url + "/metrics"))[1])

    async def settled() -> bool:
        found = await router_metrics()
        return (value(found, "cloudbunch_router_fenced_replies_total") == 1
                and value(found, "cloudbunch_router_deliveries_total", queue="ingress") == 4)

    await eventually(settled, 10, "the router to count the fenced reply and the bad message")
    r = await router_metrics()
    turns = {("greeter", "start", "open"), ("ask_name", "start", "reply"),
             ("ask_name", "message", "close"), ("greeter", "result", "reply"),
             ("greeter", "message", "close")}
    for service, event, action in turns:
        assert value(r, "cloudbunch_router_turns_total", service=service, event=event,
                     action=action) == 1, (service, event, action)
    assert sum(v for (n, _), v in r.items() if n == "cloudbunch_router_turns_total") == 5
    assert value(r, "cloudbunch_router_turn_seconds_count", service="greeter") == 3
    assert value(r, "cloudbunch_router_chains_total", outcome="reply") == 2
    assert value(r, "cloudbunch_router_chains_total", outcome="end") == 1
    assert value(r, "cloudbunch_router_notices_total", type="output") == 2
    assert value(r, "cloudbunch_router_notices_total", type="end") == 1
    assert value(r, "cloudbunch_router_notices_total", type="error") == 1  # invalid_message
    assert value(r, "cloudbunch_router_stack_depth_count") == 5
    assert value(r, "cloudbunch_router_stack_depth_bucket", le="2.0") == 5
    assert value(r, "cloudbunch_router_stack_depth_bucket", le="1.0") == 3  # 2, 2, 1, 1, 0
    assert value(r, "cloudbunch_router_deliveries_total", queue="replies") == 6
    assert value(r, "cloudbunch_router_dead_letters_total", queue=h.ingress,
                 reason="invalid") == 1
    assert value(r, "cloudbunch_router_dependency_up", dependency="redis") == 1
    assert value(r, "cloudbunch_router_dependency_up", dependency="rabbitmq") == 1
    assert value(r, "cloudbunch_router_outages_total", dependency="redis") == 0
    # Starting up is no outage: the broker is not watched before it first connected.
    assert value(r, "cloudbunch_router_outages_total", dependency="rabbitmq") == 0
    assert value(r, "cloudbunch_router_step_phase_seconds_count", phase="core") >= 8
    assert value(r, "cloudbunch_router_step_phase_seconds_count", phase="commit") >= 8

    w = samples((await fetch(worker_url + "/metrics"))[1])
    assert value(w, "cloudbunch_worker_deliveries_total", service="greeter") == 3
    assert value(w, "cloudbunch_worker_deliveries_total", service="ask_name") == 2
    for service, action in (("greeter", "open"), ("greeter", "reply"), ("greeter", "close"),
                            ("ask_name", "reply"), ("ask_name", "close")):
        assert value(w, "cloudbunch_worker_replies_total", service=service, action=action) == 1
    assert value(w, "cloudbunch_worker_handler_seconds_count", service="greeter",
                 event="start") == 1
    assert value(w, "cloudbunch_worker_in_progress", service="greeter") == 0
    assert value(w, "cloudbunch_worker_prefetch", service="ask_name") == 16
    assert value(w, "cloudbunch_worker_broker_up") == 1
    for (name, labels), _ in {**r, **w}.items():
        assert not {"session", "turn"} & {k for k, _ in labels}, name

    # Every query of the dashboard names a metric these endpoints expose.
    exposed = exposed_names((await fetch(router_url + "/metrics"))[1]) | exposed_names(
        (await fetch(worker_url + "/metrics"))[1])
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        names = re.findall(r"\bcloudbunch_[a-z_]+", expr)
        assert names, expr
        for name in names:
            assert name in exposed, f"{name} (in {expr!r}) is not exposed"
    # docs/operations.md lists every metric.
    operations = (ROOT / "docs" / "operations.md").read_text()
    for line in ((await fetch(router_url + "/metrics"))[1] + (
            await fetch(worker_url + "/metrics"))[1]).splitlines():
        if line.startswith("# HELP cloudbunch_"):
            name = line.split()[2].removesuffix("_total")
            assert f"`{name}" in operations, f"docs/operations.md does not list {name}"


async def test_queue_wait_of_a_worker_started_late(ops: Harness) -> None:
    """A dispatch that waits 2 s in its service queue for the first worker counts at least
    2 s of queue wait; the next turn, taken at once, under a second."""
    h = ops
    await h.router(root="greeter", turn_timeout=30)  # no second attempt while it waits
    for name in ("greeter", "ask_name"):
        queue = f"{h.ns}.service.{name}"
        h.queues.add(queue)
        await h.channel.declare_queue(queue, durable=True, arguments=SHARED_ARGS)
    front = await h.frontend()
    first = await front.send("s1", "hi")
    await eventually(lambda: h.message_count(f"{h.ns}.service.greeter"), 10,
                     "the dispatch waiting in the greeter queue")
    await asyncio.sleep(2.0)
    worker = await Proc.spawn("worker", cli(
        "worker", "examples.tutorial:greeter", "examples.tutorial:ask_name", "--namespace",
        h.ns, "--queue-type", QUEUE_TYPE, "--amqp-url", h.amqp_url, "--metrics-port", "0"))
    h.procs.append(worker)
    worker_url = f"http://127.0.0.1:{await port_of(worker)}"
    assert await front.outputs(first, 1, timeout=20) == ["Hello! What is your name?"]
    w = samples((await fetch(worker_url + "/metrics"))[1])
    name = "cloudbunch_worker_queue_wait_seconds"
    assert value(w, name + "_count", service="greeter") == 1
    assert value(w, name + "_bucket", service="greeter", le="1.0") == 0
    waited = value(w, name + "_sum", service="greeter")
    assert 2.0 <= waited < 30, waited
    assert value(w, name + "_count", service="ask_name") == 1
    assert value(w, name + "_bucket", service="ask_name", le="1.0") == 1
    assert value(w, name + "_sum", service="ask_name") < 1.0


async def test_readiness_follows_the_router_connections(
        namespace: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not ready while Redis fails or the RabbitMQ connection is down (this router's own
    connections: nothing shared is cut)."""
    import os

    from router.store import DEFAULT_REDIS_URL

    config = RouterConfig(root="greeter", namespace=namespace, amqp_url=amqp_url,
                          redis_url=os.environ.get("CLOUDBUNCH_REDIS_URL", DEFAULT_REDIS_URL),
                          queue_type=QUEUE_TYPE)
    broker = AmqpBroker(amqp_url, QUEUE_TYPE, name=f"test {namespace}")
    store = RedisStore(config.redis_url, namespace)
    metrics = RouterMetrics(config.core())
    router = Router(config, broker, store, metrics=metrics)
    server = await start_router_probes(router, 0)
    url = f"http://127.0.0.1:{server.port}"
    names = (router.ingress, router.replies, router.dead)
    try:
        assert (await fetch(url + "/readyz"))[0] == 503  # not consuming yet
        await broker.connect()
        await router.start()
        assert await fetch(url + "/readyz") == (200, "ready\n")

        original = store.claim_due

        async def failing(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable("Redis is down (test)")

        monkeypatch.setattr(store, "claim_due", failing)

        async def redis_not_ready() -> bool:
            status, text = await fetch(url + "/readyz")
            return status == 503 and "Redis" in text

        await eventually(redis_not_ready, 10, "/readyz to say Redis is down")
        found = samples((await fetch(url + "/metrics"))[1])
        assert value(found, "cloudbunch_router_dependency_up", dependency="redis") == 0
        assert value(found, "cloudbunch_router_outages_total", dependency="redis") == 1
        monkeypatch.setattr(store, "claim_due", original)
        await eventually(lambda: router.not_ready() is None, 10, "ready again")
        assert (await fetch(url + "/readyz"))[0] == 200

        await router.stop(grace=0.5)
        for queue in names:
            await broker.delete(queue)
        await broker.close()
        status, text = await fetch(url + "/readyz")
        assert status == 503, text

        async def rabbit_down() -> bool:
            found = samples((await fetch(url + "/metrics"))[1])
            return value(found, "cloudbunch_router_dependency_up", dependency="rabbitmq") == 0

        await eventually(rabbit_down, 10, "the rabbitmq gauge to drop")
    finally:
        await server.close()
        await broker.close()
        await store.close()


@pytest.mark.disruptive
async def test_readiness_flips_during_a_broker_cut(ops: Harness) -> None:
    """The broker closes every connection: the router counts the outage (readiness down) and
    /readyz says 200 again once it reconnected. Cuts every client's connection: run alone."""
    from tests.chaos.load import close_all_connections

    router = await ops.router(root="greeter", metrics_port=0)
    url = f"http://127.0.0.1:{await port_of(router)}"
    assert (await fetch(url + "/readyz"))[0] == 200
    await close_all_connections("readiness test")

    async def status_is(code: int) -> bool:
        return (await fetch(url + "/readyz"))[0] == code

    # The router may be back within milliseconds (the broker is local), too soon for a poll
    # to catch the 503: the outage it counted is the proof that readiness went down (the
    # in-process tests check that a down broker means 503).
    async def outage_counted() -> bool:
        found = samples((await fetch(url + "/metrics"))[1])
        return value(found, "cloudbunch_router_outages_total", dependency="rabbitmq") >= 1

    await eventually(outage_counted, 10, "the broker outage to be counted")
    await eventually(lambda: status_is(200), 40, "/readyz 200 once reconnected")

    async def broker_up() -> bool:  # the gauge follows the connection every 0.5 s
        found = samples((await fetch(url + "/metrics"))[1])
        return value(found, "cloudbunch_router_dependency_up", dependency="rabbitmq") == 1

    await eventually(broker_up, 5, "the broker gauge back at 1")
