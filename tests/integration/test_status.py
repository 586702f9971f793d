"""``cloudbunch status`` against the real RabbitMQ: a service without workers makes it exit
1, dead letters are summarised and left in place."""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import pytest

from .procs import SHARED_ARGS, Harness, child_env, cli, pack
from .test_metrics import port_of

pytestmark = pytest.mark.infra


async def status(h: Harness, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *cli("status", "--namespace", h.ns, "--amqp-url", h.amqp_url, "--management-url",
             "off", "--interval", "0.2", *args),
        env=child_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def dead_letter(h: Harness, body: Any, reason: str, detail: str) -> None:
    await h.channel.default_exchange.publish(
        aio_pika.Message(pack(body), headers={"x-cb-reason": reason, "x-cb-detail": detail,
                                              "x-cb-source-queue": h.ingress},
                         delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=h.dead, mandatory=True)


async def test_a_service_without_workers_needs_a_person(ops: Harness) -> None:
    h = ops
    await h.router(root="greeter")
    await h.worker("examples.tutorial:greeter")
    lonely = f"{h.ns}.service.lonely"
    h.queues.add(lonely)
    channel = await h._conn.channel()  # type: ignore[union-attr]
    queue = await channel.declare_queue(lonely, durable=True, arguments=SHARED_ARGS)
    for n in range(2):
        await h.publish(lonely, pack({"n": n}))

    code, out = await status(h, "--service", "greeter", "--service", "lonely")
    assert code == 1, out
    assert "no workers for lonely: 2 messages waiting" in out
    lines = {line.split()[0]: line.split()[1:3] for line in out.splitlines()
             if line.startswith(h.ns + ".")}
    assert lines[lonely] == ["2", "0"]
    assert lines[f"{h.ns}.service.greeter"] == ["0", "1"]
    assert lines[h.ingress] == ["0", "1"] and lines[h.replies] == ["0", "1"]

    await queue.purge()
    code, out = await status(h, "--service", "greeter", "--service", "lonely")
    assert code == 0, out
    assert "nothing needs a person" in out
    await channel.close()


async def test_dead_letters_are_summarised_and_left_in_place(ops: Harness) -> None:
    h = ops
    await h.router(root="greeter")
    await dead_letter(h, {"v": 2}, "invalid", "field 'v' is 2; this party speaks version 1")
    await dead_letter(h, {"v": 3}, "invalid", "field 'v' is 3; this party speaks version 1")
    await dead_letter(h, "x", "undecodable", "not msgpack")

    code, out = await status(h)
    # Stable dead letters alone need no person; growth does (tested in test_status_unit).
    assert code == 0, out
    assert "invalid x2, undecodable x1" in out
    assert "field 'v' is 3" in out
    assert await h.message_count(h.dead) == 3
    # Where the rates would come from, since neither source was given.
    assert "  no IN/S: the management API is off (--management-url off)" in out
    assert "  no TURNS/S: pass each router's /metrics with --metrics-url" in out


async def test_absent_service_queue_is_reported(ops: Harness) -> None:
    h = ops
    router = await h.router(root="greeter", metrics_port=0)
    metrics = f"http://127.0.0.1:{await port_of(router)}/metrics"
    code, out = await status(h, "--service", "nosuch", "--metrics-url", metrics)
    assert code == 1, out
    assert "no queue for service nosuch" in out
    assert "  TURNS/S: turns decided per second by service, from 1 router's /metrics" in out
    assert out.splitlines()[3].split() == ["QUEUE", "READY", "CONSUMERS", "TURNS/S"]
