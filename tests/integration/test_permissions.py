"""deploy/rabbitmq-users.sh against the real broker: each role may do its job and nothing
that its permissions can forbid; what they cannot forbid is pinned down too (PERMISSIONS.md).

Every check opens its own channel: a refused operation closes the channel (ACCESS_REFUSED).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel

from worker_sdk.amqp import AmqpBroker
from worker_sdk.client import Client

from .procs import QUEUE_TYPE, REPO, SHARED_ARGS, Harness

pytestmark = pytest.mark.infra

SCRIPT = REPO / "deploy" / "rabbitmq-users.sh"
SERVICES = ("root", "step")  # tests.integration.flows, so the end-to-end run can use them
FRONTENDS = ("web", "other")
FLOWS = "tests.integration.flows"

Op = Callable[[AbstractChannel], Awaitable[Any]]


async def run_script(*args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run the script; return (stdout, stderr), failing the test on a non-zero exit."""
    process = await asyncio.create_subprocess_exec(
        "bash", str(SCRIPT), *args, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, f"exit {process.returncode}:\n{err.decode()}"
    return out.decode(), err.decode()


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class Users:
    ns: str
    urls: dict[str, str]  # role ("router", "service-root", "frontend-web"...) -> AMQP URL

    def url(self, role: str) -> str:
        return self.urls[role]


@pytest.fixture
async def users(namespace: str, amqp_url: str) -> AsyncIterator[Users]:
    """The script's users for a random namespace (so random user names); deleted after."""
    args = ["--namespace", namespace, "--vhost", vhost_of(amqp_url)]
    for name in SERVICES:
        args += ["--service", name]
    for name in FRONTENDS:
        args += ["--frontend", name]
    # One password from the environment, the others generated and printed.
    web_password = secrets.token_hex(12)
    try:
        out, _ = await run_script(*args, env={"CLOUDBUNCH_PASSWORD_FRONTEND_WEB": web_password})
        passwords = dict(line.split("\t") for line in out.splitlines())
        passwords[f"{namespace}-frontend-web"] = web_password
        roles = ["router", *(f"service-{s}" for s in SERVICES),
                 *(f"frontend-{f}" for f in FRONTENDS)]
        assert set(passwords) == {f"{namespace}-{role}" for role in roles}
        urls = {role: with_user(amqp_url, f"{namespace}-{role}",
                                passwords[f"{namespace}-{role}"]) for role in roles}
        yield Users(namespace, urls)
    finally:
        await run_script(*args, "--delete")
        await delete_queues(amqp_url, namespace)


async def delete_queues(amqp_url: str, ns: str) -> None:
    names = [f"{ns}.{q}" for q in ("ingress", "replies", "dead")]
    names += [f"{ns}.service.{s}" for s in (*SERVICES, "nope")]
    names += [f"{ns}.client.{f}" for f in FRONTENDS] + [f"{ns}.client.web.extra"]
    connection = await aio_pika.connect(amqp_url, timeout=10)
    async with connection:
        for name in names:
            with contextlib.suppress(Exception):
                channel = await connection.channel()
                await channel.queue_delete(name)
                await channel.close()


# ---------------------------------------------------------------------- operations


def declare(queue: str, shared: bool = True) -> Op:
    """Declare as the protocol says: shared queues with exactly the queue type argument."""
    async def op(channel: AbstractChannel) -> Any:
        return await channel.declare_queue(queue, durable=True,
                                           arguments=SHARED_ARGS if shared else None)
    return op


def consume(queue: str) -> Op:
    async def op(channel: AbstractChannel) -> Any:
        declared = await channel.get_queue(queue, ensure=False)
        return await declared.consume(_ignore)
    return op


async def _ignore(message: aio_pika.abc.AbstractIncomingMessage) -> None:
    await message.reject(requeue=True)


def publish(queue: str, exchange: str = "") -> Op:
    """Publish with mandatory; the result says whether a queue took it."""
    async def op(channel: AbstractChannel) -> Any:
        target = (channel.default_exchange if exchange == ""
                  else await channel.get_exchange(exchange, ensure=False))
        confirm = await target.publish(aio_pika.Message(b"\x80"), routing_key=queue,
                                       mandatory=True)
        return isinstance(confirm, aiormq.spec.Basic.Ack)
    return op


def delete(queue: str) -> Op:
    async def op(channel: AbstractChannel) -> Any:
        return await channel.queue_delete(queue)
    return op


def passive(queue: str) -> Op:
    async def op(channel: AbstractChannel) -> Any:
        return await channel.declare_queue(queue, passive=True)
    return op


class As:
    """One user's connection; each check on a fresh channel."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connection: aio_pika.abc.AbstractConnection | None = None

    async def __aenter__(self) -> As:
        self.connection = await aio_pika.connect(self.url, timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.connection is not None
        await self.connection.close()

    async def _run(self, op: Op) -> Any:
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True)
        try:
            return await op(channel)
        finally:
            if not channel.is_closed:
                await channel.close()

    async def allowed(self, op: Op) -> Any:
        return await self._run(op)

    async def refused(self, op: Op) -> None:
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await self._run(op)


# ---------------------------------------------------------------------- tests


async def test_each_role_can_do_its_job_and_no_more(users: Users) -> None:
    ns = users.ns
    ingress, replies, dead = f"{ns}.ingress", f"{ns}.replies", f"{ns}.dead"
    root_q, step_q = f"{ns}.service.root", f"{ns}.service.step"
    web_q, other_q = f"{ns}.client.web", f"{ns}.client.other"

    async with As(users.url("router")) as router:
        for queue in (ingress, replies, dead):
            await router.allowed(declare(queue))
        await router.allowed(consume(ingress))
        await router.allowed(consume(replies))
        await router.refused(consume(dead))  # operators read the dead letters
        await router.refused(declare(root_q))  # services declare their own queues

    async with As(users.url("service-root")) as svc:
        await svc.allowed(declare(replies))  # the SDK re-declares it at start
        await svc.allowed(declare(root_q))
        await svc.allowed(consume(root_q))
        assert await svc.allowed(publish(replies))
        await svc.refused(declare(ingress))
        await svc.refused(declare(step_q))
        await svc.refused(consume(ingress))
        await svc.refused(consume(replies))
        await svc.refused(publish(replies, exchange="amq.direct"))
    async with As(users.url("service-step")) as svc:
        await svc.allowed(declare(step_q))
        await svc.refused(consume(root_q))
        await svc.refused(delete(root_q))

    async with As(users.url("frontend-web")) as web:
        await web.allowed(declare(web_q, shared=False))
        await web.allowed(declare(f"{web_q}.extra", shared=False))
        await web.allowed(consume(web_q))
        assert await web.allowed(publish(ingress))
        await web.refused(declare(f"{ns}.client.{secrets.token_hex(6)}", shared=False))
        await web.refused(declare(other_q, shared=False))
        await web.refused(declare("", shared=False))  # server-named: amq.gen-...
        await web.refused(declare(ingress))
        await web.refused(consume(ingress))
        await web.refused(consume(replies))
        await web.refused(consume(root_q))
    async with As(users.url("frontend-other")) as other:
        await other.allowed(declare(other_q, shared=False))
        await other.refused(consume(web_q))
        await other.refused(delete(web_q))

    async with As(users.url("router")) as router:
        # The router publishes dispatches, notices and dead letters.
        assert await router.allowed(publish(root_q))
        assert await router.allowed(publish(web_q))
        assert await router.allowed(publish(dead))


async def test_what_permissions_cannot_restrict(users: Users) -> None:
    """Pins the limits documented in PERMISSIONS.md, so a change in RabbitMQ shows here."""
    ns = users.ns
    ingress, replies = f"{ns}.ingress", f"{ns}.replies"
    root_q, step_q = f"{ns}.service.root", f"{ns}.service.step"
    async with As(users.url("router")) as router:
        for queue in (ingress, replies):
            await router.allowed(declare(queue))
    async with As(users.url("service-step")) as step:
        await step.allowed(declare(step_q))
    async with As(users.url("frontend-web")) as web:
        await web.allowed(declare(f"{ns}.client.web", shared=False))
    async with As(users.url("service-root")) as svc:
        await svc.allowed(declare(root_q))
        # A default-exchange publish is checked against "amq.default" only, so a service
        # can publish into any queue: forge client messages and other services' dispatches.
        assert await svc.allowed(publish(ingress))
        assert await svc.allowed(publish(step_q))
        # Passive declares are not checked: anyone learns whether a queue exists.
        await svc.allowed(passive(f"{ns}.client.web"))
    async with As(users.url("frontend-web")) as web:
        assert await web.allowed(publish(replies))  # forged replies: fenced off by the router
    async with As(users.url("service-root")) as svc:
        # Configure on NS.replies (the SDK re-declares it) also allows deleting it.
        await svc.allowed(delete(replies))


async def test_the_system_runs_on_the_restricted_users(users: Users, e2e: Harness) -> None:
    """A router, one worker per service and an SDK client, each on its own user."""
    guest_url = e2e.amqp_url
    e2e.queues.add(f"{users.ns}.client.web")
    with as_user(e2e, users.url("router")):
        await e2e.router("root", turn_timeout=5)
    for name in SERVICES:
        with as_user(e2e, users.url(f"service-{name}")):
            await e2e.worker(f"{FLOWS}:{name}")
    assert e2e.amqp_url == guest_url

    broker = AmqpBroker(users.url("frontend-web"), QUEUE_TYPE, name="test-permissions")
    await broker.connect()
    try:
        # A frontend names its reply queue under NS.client.FRONTEND (a generated name is
        # outside its permissions).
        client = Client(broker, users.ns, reply_queue=f"{users.ns}.client.web")
        async with client:
            notices = await client.conversation("s1", "hello", timeout=15)
            assert [(n.type, n.payload) for n in notices] == [("output", "HELLO#1")]
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await Client(broker, users.ns).start()
    finally:
        await broker.close()


@contextlib.contextmanager
def as_user(harness: Harness, url: str) -> Iterator[None]:
    """Start the harness's processes with another AMQP URL."""
    saved, harness.amqp_url = harness.amqp_url, url
    try:
        yield
    finally:
        harness.amqp_url = saved


async def test_script_is_idempotent_and_deletes(namespace: str, amqp_url: str) -> None:
    vhost = vhost_of(amqp_url)
    args = ["--namespace", namespace, "--vhost", vhost, "--no-router", "--service", "x.y"]
    user = f"{namespace}-service-x.y"
    try:
        out, _ = await run_script(*args)
        (line,) = out.splitlines()
        name, password = line.split("\t")
        assert name == user
        # Again: permissions set again, the password kept, nothing printed.
        out, _ = await run_script(*args)
        assert out == ""
        async with As(with_user(amqp_url, user, password)) as svc:
            await svc.allowed(declare(f"{namespace}.service.x.y"))
            # The dot in the name is escaped: "x.y" does not cover "xzy".
            await svc.refused(declare(f"{namespace}.service.xzy"))
        # A password from the environment replaces it.
        new = secrets.token_hex(12)
        await run_script(*args, env={"CLOUDBUNCH_PASSWORD_SERVICE_X_Y": new})
        async with As(with_user(amqp_url, user, new)):
            pass
        _, err = await run_script(*args, "--delete")
        assert f"user {user}: deleted" in err
        with pytest.raises(aiormq.exceptions.ProbableAuthenticationError):
            await aio_pika.connect(with_user(amqp_url, user, new), timeout=10)
        _, err = await run_script(*args, "--delete")
        assert f"user {user}: does not exist" in err
    finally:
        await run_script(*args, "--delete")
        connection = await aio_pika.connect(amqp_url, timeout=10)
        async with connection:
            with contextlib.suppress(Exception):
                channel = await connection.channel()
                await channel.queue_delete(f"{namespace}.service.x.y")


def test_script_rejects_a_frontend_name_with_a_dot() -> None:
    # "a" would otherwise cover "a.b"'s queue (NS.client.a.*).
    import subprocess

    result = subprocess.run(["bash", str(SCRIPT), "--frontend", "a.b"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2
    assert "bad frontend name" in result.stderr

