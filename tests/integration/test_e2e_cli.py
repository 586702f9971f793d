"""The ``cloudbunch`` command as an operator runs it: router exit codes and messages,
``session show`` and the demo in both modes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

from worker_sdk.amqp_connect import CONNECT_TIMEOUT

from .procs import REPO, Harness, child_env, cli
from .test_e2e_actions import deploy, start_root

pytestmark = pytest.mark.infra

UNREACHABLE = "amqp://guest:guest@127.0.0.1:1/"
PIZZA = ("pizza", "menu", "order", "checkout", "address", "payment")


async def run_cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run ``cloudbunch ARGS``; return exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        *cli(*args), cwd=str(REPO), env=child_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
def unreachable() -> Iterator[tuple[subprocess.Popen[bytes], Any, float]]:
    """A router pointed at a closed port, started early: it retries the connection for its
    whole connect time (~30 s) before giving up, so it runs while the other tests do."""
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        process = subprocess.Popen(cli("router", "--root", "A", "--namespace", "tunreachable",
                                       "--amqp-url", UNREACHABLE),
                                   cwd=str(REPO), env=child_env(), stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=out)
        try:
            yield process, out, started
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


async def test_router_without_root_prints_one_line_and_exits_1(
        unreachable: Any) -> None:
    code, out, err = await run_cli("router", "--namespace", "tnoroot")
    assert code == 1
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "root" in lines[0] and "Traceback" not in err


async def test_sigterm_exits_0_and_another_replica_completes_the_turn(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A")
    a = s["A"]
    first = e2e.procs[0]
    mid = await front.send("s", "hi")
    d = await a.next()
    started = time.monotonic()
    code = await first.stop(timeout=12)
    took = time.monotonic() - started
    assert code == 0, first.output()
    assert took < 10, took
    assert "Traceback" not in first.output()
    await e2e.router("A")
    await a.reply(d, "reply", output=["served by the other replica"])
    assert await front.outputs(mid, 1) == ["served by the other replica"]


async def test_session_show_prints_the_stack(e2e: Harness) -> None:
    front, s = await deploy(e2e, "A", "B")
    a, b = s["A"], s["B"]
    await start_root(front, a, "tg:42")
    await front.send("tg:42", "open B")
    await a.reply(await a.next(), "open", service="B", idle=900)
    await b.reply(await b.next(), "reply", state="b0")
    await front.harness.idle("tg:42")
    await front.send("tg:42", "go")
    await s["B"].next()  # leaves a turn in flight
    code, out, err = await run_cli("session", "show", "tg:42", "--namespace", e2e.ns,
                                   "--redis-url", e2e.redis_url)
    assert code == 0, err
    assert re.search(r"^\s*0: A\s+state='a0'$", out, re.M), out
    assert re.search(r"^\s*idle timer: 900 s of silence, fires at 20\d\d-\S+ \(in 89\d\.\d s",
                     out, re.M), out
    assert re.search(r"^\s*1: B\s+state='b0'$", out, re.M), out
    assert "turn in flight:" in out and "event=message depth=1" in out, out
    code, out, err = await run_cli("session", "show", "nobody", "--namespace", e2e.ns,
                                   "--redis-url", e2e.redis_url)
    assert code == 1 and "no record" in out + err
    await start_root(front, s["A"], "other")


def check_demo(out: str) -> None:
    """What a person reading the demo's transcript sees."""
    lines = out.splitlines()

    def index(pattern: str, after: int = -1) -> int:
        for i, line in enumerate(lines):
            if i > after and re.search(pattern, line, re.I):
                return i
        raise AssertionError(f"no line matching {pattern!r} after line {after}:\n{out}")

    assert index(r"^bot> Welcome") < index(r"^you> help$")
    where = index(r"^bot> Where should we deliver")
    help_asked = index(r"^you> help$", where)
    help_text = index(r"^bot> I take pizza orders", help_asked)
    street = index(r"^you> 12 Baker Street", help_text)
    assert help_text < street
    # The address form was still open: the street answered it, so payment is asked next.
    card = index(r"^bot> Please type your card number", street)
    assert card == street + 1, lines[street:card + 1]
    declined = index(r"declined", card)
    confirmed = index(r"^bot> Thank you! Order #1 confirmed", declined)
    cancelled = index(r"^bot> Okay, I cancelled that order", confirmed)
    index(r"^bot> This conversation has ended", cancelled)
    assert "error" not in out.lower() and "Traceback" not in out


async def test_demo_embedded(unreachable: Any) -> None:
    code, out, err = await run_cli("demo", "--embedded", "--script",
                                   "router/demo_script.txt")
    assert code == 0, err
    assert "embedded" in out.splitlines()[0]
    check_demo(out)


async def test_demo_real(e2e: Harness) -> None:
    e2e.queues.update(f"{e2e.ns}.service.{name}" for name in PIZZA)
    code, out, err = await run_cli("demo", "--real", "--namespace", e2e.ns,
                                   "--amqp-url", e2e.amqp_url, "--redis-url", e2e.redis_url,
                                   "--script", "router/demo_script.txt")
    assert code == 0, err
    assert "using RabbitMQ" in out.splitlines()[0]
    check_demo(out)


async def test_unreachable_broker_prints_one_clear_line(unreachable: Any) -> None:
    process, out, started = unreachable
    code = await asyncio.to_thread(process.wait, 90)
    took = time.monotonic() - started
    out.seek(0)
    text = out.read().decode(errors="replace")
    assert code != 0
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    # One line when it starts retrying, one when it gives up after the connect time.
    assert "RabbitMQ is not reachable" in lines[-1] and "127.0.0.1:1" in lines[-1], lines[-1]
    assert f"after trying for {CONNECT_TIMEOUT:g} s" in lines[-1], lines[-1]
    assert len(lines) == 2, f"{len(lines)} lines instead of two (after {took:.0f} s):\n" + \
        "\n".join(lines[:5])
    assert f"retrying for {CONNECT_TIMEOUT:.0f} s" in lines[0], lines[0]
    assert took >= CONNECT_TIMEOUT
