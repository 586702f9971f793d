"""``cloudbunch purge``: a namespace's queues and keys go, after a confirmation, and never
while a router serves it. Each test has a namespace of its own (the ``ops`` harness)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pexpect
import pytest

from worker_sdk.amqp import AmqpBroker
from worker_sdk.client import Client

from .procs import REPO, Harness, Proc, child_env, cli

pytestmark = pytest.mark.infra


@dataclass
class Served:
    """A namespace a router serves, with one conversation's queues and keys in it."""

    h: Harness
    router: Proc
    worker: Proc
    queues: list[str]
    checker: AmqpBroker

    async def existing(self) -> list[str]:
        return [q for q in self.queues if await self.checker.queue_exists(q)]

    async def keys(self) -> int:
        return len([k async for k in self.h.store._redis.scan_iter(match=f"{self.h.ns}:*")])

    async def stop_serving(self) -> None:
        assert await self.router.stop() == 0
        assert await self.worker.stop() == 0


@pytest.fixture
async def served(ops: Harness) -> AsyncIterator[Served]:
    h = ops
    router = await h.router("greeter")
    worker = await h.worker("examples.tutorial:greeter", "examples.tutorial:ask_name")
    broker = AmqpBroker(h.amqp_url, name="test-purge-client")
    await broker.connect()
    try:
        async with Client(broker, h.ns) as client:
            notices = await client.conversation("s1", "hi", settle=0.5)
            assert [n.payload for n in notices] == ["Hello! What is your name?"]
    finally:
        await broker.close()
    queues = [h.ingress, h.replies, h.dead, f"{h.ns}.service.greeter",
              f"{h.ns}.service.ask_name"]
    checker = AmqpBroker(h.amqp_url, name="test-purge-check")
    await checker.connect()
    try:
        yield Served(h, router, worker, queues, checker)
    finally:
        await checker.close()


def purge_argv(h: Harness, *args: str) -> list[str]:
    return cli("purge", "--namespace", h.ns, "--amqp-url", h.amqp_url, "--redis-url",
               h.redis_url, *args)


async def purge(h: Harness, *args: str) -> tuple[int, str]:
    """``cloudbunch purge`` with no terminal (stdin from /dev/null)."""
    process = await asyncio.create_subprocess_exec(
        *purge_argv(h, *args), cwd=str(REPO), env=child_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def purge_in_terminal(h: Harness, answer: str | None) -> tuple[int, str]:
    """``cloudbunch purge`` in a pseudo-terminal, as a person runs it: wait for the question
    and type ``answer`` (None: expect no question at all). Returns (exit code, output)."""
    argv = purge_argv(h)

    def run() -> tuple[int, str]:
        seen = io.StringIO()
        child = pexpect.spawn(argv[0], argv[1:], cwd=str(REPO), env=child_env(),
                              encoding="utf-8", timeout=60, dimensions=(40, 400))
        child.logfile_read = seen
        try:
            if answer is not None:
                child.expect_exact("Delete them? [y/N]: ")
                child.sendline(answer)
            child.expect(pexpect.EOF)
        finally:
            child.close()
        assert child.exitstatus is not None, seen.getvalue()
        return child.exitstatus, seen.getvalue().replace("\r\n", "\n")

    # pexpect blocks: run it beside the event loop, which keeps serving the harness.
    return await asyncio.to_thread(run)


async def test_purge_refuses_while_a_router_serves_then_deletes_after_yes(
        served: Served) -> None:
    s, h = served, served.h
    code, out = await purge(h, "--yes")
    assert code == 1, out
    assert out.strip() == (f"cloudbunch purge: 1 consumer(s) on {h.ingress}: a router is "
                           f"serving namespace '{h.ns}'; stop every router of it first"), out
    assert await s.existing() == s.queues
    assert await s.keys() > 0

    await s.stop_serving()
    # No terminal to ask and no --yes: nothing happens.
    code, out = await purge(h)
    assert code == 1 and "pass --yes to confirm without a terminal" in out, out
    assert await s.keys() > 0
    assert await s.existing() == s.queues

    # Without the management API (this broker runs no plugins), a service no session has
    # open and a frontend's own queue are found only by name; the gateways' by their names.
    extra, own, web = f"{h.ns}.service.extra", f"{h.ns}.client.web", f"{h.ns}.web.notices"
    h.queues.update((extra, own, web))
    await s.checker.declare(extra)
    await s.checker.declare_own(own)
    await s.checker.declare_own(web)
    code, out = await purge(h, "--yes", "--service", "extra", "--queue", own)
    assert code == 0, out
    assert "the management API (http://127.0.0.1:15672) did not answer" in out, out
    assert "deleted 8 queue(s), 2 exchange(s) and" in out, out
    assert await s.existing() == []
    for queue in (extra, own, web):
        assert not await s.checker.queue_exists(queue), queue
    for exchange in (f"{h.ns}.x.ingress", f"{h.ns}.x.replies"):
        assert not await s.checker.exchange_exists(exchange), exchange
    assert await s.keys() == 0

    code, out = await purge(h, "--yes", "--queue", "other.client.web")
    assert code == 1 and out.strip() == (
        f"cloudbunch purge: --queue 'other.client.web' is not a queue of namespace "
        f"'{h.ns}': its name must start with '{h.ns}.'"), out


async def test_purge_in_a_terminal_asks_and_no_keeps_everything(served: Served) -> None:
    s, h = served, served.h
    # Refused before anything is asked while a router consumes the namespace.
    code, out = await purge_in_terminal(h, None)
    assert code == 1, out
    assert out.strip() == (f"cloudbunch purge: 1 consumer(s) on {h.ingress}: a router is "
                           f"serving namespace '{h.ns}'; stop every router of it first"), out
    await s.stop_serving()
    keys = await s.keys()
    assert keys > 0

    code, out = await purge_in_terminal(h, "n")
    assert code == 1, out
    question = (f"namespace '{h.ns}': 5 queue(s) ({', '.join(sorted(s.queues))}), 2 "
                f"exchange(s) and every "
                f"Redis key under '{h.ns}:'. Delete them? [y/N]: n")
    assert question in out, out
    assert "so only queues found by name go: the service queues a router of" in out, out
    assert out.rstrip().endswith("nothing deleted"), out
    assert await s.existing() == s.queues
    assert await s.keys() == keys

    # Enter alone is the default: no.
    code, out = await purge_in_terminal(h, "")
    assert code == 1 and out.rstrip().endswith("nothing deleted"), out
    assert await s.existing() == s.queues

    code, out = await purge_in_terminal(h, "y")
    assert code == 0, out
    assert out.rstrip().endswith(f"deleted 5 queue(s), 2 exchange(s) and {keys} key(s) of "
                                 "namespace "
                                 f"'{h.ns}'"), out
    assert await s.existing() == []
    assert await s.keys() == 0

    # Nothing left: nothing is asked, and saying so is no failure.
    code, out = await purge_in_terminal(h, None)
    assert code == 0, out
    assert out.strip() == (
        f"cloudbunch purge: namespace '{h.ns}': no queue it could name (the management API "
        "(http://127.0.0.1:15672) did not answer ([Errno 111] Connection refused): a "
        "frontend's own queue is found only with --queue NAME) and no Redis key found, nothing "
        "to delete (is --namespace / CLOUDBUNCH_NAMESPACE right?)"), out


async def test_purge_finds_the_service_queues_of_ended_sessions(ops: Harness) -> None:
    """A conversation that ended leaves no record naming its services: the routers noted
    their queues, so purge finds them without --service (no management API here)."""
    h = ops
    router = await h.router("greeter")
    worker = await h.worker("examples.tutorial:greeter", "examples.tutorial:ask_name")
    services = [f"{h.ns}.service.greeter", f"{h.ns}.service.ask_name"]
    broker = AmqpBroker(h.amqp_url, name="test-purge-ended")
    await broker.connect()
    try:
        async with Client(broker, h.ns) as client:
            for text in ("hi", "ada", "bye"):
                await client.conversation("s1", text, settle=0.3)
        assert await router.stop() == 0
        assert await worker.stop() == 0
        assert [q for q in services if await broker.queue_exists(q)] == services
        code, out = await purge(h, "--yes")
        assert code == 0, out
        assert "deleted 5 queue(s), 2 exchange(s)" in out, out
        assert [q for q in services if await broker.queue_exists(q)] == []
    finally:
        await broker.close()
