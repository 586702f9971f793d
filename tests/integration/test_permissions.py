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
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractChannel

from router.demo_flow import ROOT
from router.demo_flow import SERVICES as PIZZA
from worker_sdk import wire
from worker_sdk.amqp import AmqpBroker
from worker_sdk.client import Client
from worker_sdk.quick_replies import plain_text

from .procs import QUEUE_TYPE, REPO, SHARED_ARGS, Harness

pytestmark = pytest.mark.infra

SCRIPT = REPO / "deploy" / "rabbitmq-users.sh"
SERVICES = tuple(service.name for service in PIZZA)  # pizza (the root), menu, order, ...
FRONTENDS = ("web", "other")
TRANSCRIPT = Path(__file__).with_name("pizza_transcript.txt")

Op = Callable[[AbstractChannel], Awaitable[Any]]


async def run_script(*args: str, env: dict[str, str] | None = None) -> tuple[str, str]:
    """Run the script; return (stdout, stderr), failing the test on a non-zero exit."""
    process = await asyncio.create_subprocess_exec(
        "bash", str(SCRIPT), *args, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 600)  # rabbitmqctl is slow
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
    """Users for two pizza services and the frontends (each rabbitmqctl call is slow)."""
    async with made_users(namespace, amqp_url, SERVICES[:2]) as made:
        yield made


@pytest.fixture
async def pizza_users(namespace: str, amqp_url: str) -> AsyncIterator[Users]:
    """Users for every pizza service and the frontends."""
    async with made_users(namespace, amqp_url, SERVICES) as made:
        yield made


@contextlib.asynccontextmanager
async def made_users(namespace: str, amqp_url: str,
                     services: tuple[str, ...]) -> AsyncIterator[Users]:
    """The script's users for a random namespace (so random user names); deleted after."""
    args = ["--namespace", namespace, "--vhost", vhost_of(amqp_url)]
    for name in services:
        args += ["--service", name]
    for name in FRONTENDS:
        args += ["--frontend", name]
    # One password from the environment, the others generated and printed.
    web_password = secrets.token_hex(12)
    try:
        out, _ = await run_script(*args, env={"CLOUDBUNCH_PASSWORD_FRONTEND_WEB": web_password})
        passwords = dict(line.split("\t") for line in out.splitlines())
        passwords[f"{namespace}-frontend-web"] = web_password
        roles = ["router", *(f"service-{s}" for s in services),
                 *(f"frontend-{f}" for f in FRONTENDS)]
        assert set(passwords) == {f"{namespace}-{role}" for role in roles}
        urls = {role: with_user(amqp_url, f"{namespace}-{role}",
                                passwords[f"{namespace}-{role}"]) for role in roles}
        yield Users(namespace, urls)
    finally:
        await run_script(*args, "--delete")
        await delete_names(amqp_url, namespace)


async def delete_names(amqp_url: str, ns: str) -> None:
    """Delete every queue and exchange the tests may have made in namespace ``ns``."""
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
        for exchange in wire.exchange_names(ns).values():
            with contextlib.suppress(Exception):
                channel = await connection.channel()
                await channel.exchange_delete(exchange)
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
    """Publish with mandatory (``queue`` is the routing key); the result says whether a
    queue took it (False: returned, no queue is bound under that key)."""
    async def op(channel: AbstractChannel) -> Any:
        target = (channel.default_exchange if exchange == ""
                  else await channel.get_exchange(exchange, ensure=False))
        try:
            confirm = await target.publish(aio_pika.Message(b"\x80"), routing_key=queue,
                                           mandatory=True)
        except aio_pika.exceptions.DeliveryError as exc:
            assert exc.message is not None  # returned, not refused
            return False
        return isinstance(confirm, aiormq.spec.Basic.Ack)
    return op


def bind(exchange: str, key: str, queue: str) -> Op:
    """Declare the durable direct exchange and bind ``queue`` under ``key`` (as the router)."""
    async def op(channel: AbstractChannel) -> Any:
        declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.DIRECT,
                                                  durable=True)
        target = await channel.get_queue(queue, ensure=False)
        return await target.bind(declared, key)
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


@pytest.mark.timeout(600)
async def test_each_role_can_do_its_job_and_no_more(users: Users) -> None:
    ns = users.ns
    ingress, replies, dead = f"{ns}.ingress", f"{ns}.replies", f"{ns}.dead"
    x_ingress, x_replies = f"{ns}.x.ingress", f"{ns}.x.replies"
    root_q, step_q = f"{ns}.service.pizza", f"{ns}.service.menu"
    web_q, other_q = f"{ns}.client.web", f"{ns}.client.other"

    async with As(users.url("router")) as router:
        for queue in (ingress, replies, dead):
            await router.allowed(declare(queue))
        await router.allowed(bind(x_ingress, "ingress", ingress))
        await router.allowed(bind(x_replies, "replies", replies))
        await router.allowed(consume(ingress))
        await router.allowed(consume(replies))
        await router.refused(consume(dead))  # operators read the dead letters
        await router.refused(declare(root_q))  # services declare their own queues
        await router.refused(bind(x_replies, "replies", dead))  # no other bindings

    async with As(users.url("service-pizza")) as svc:
        await svc.allowed(declare(root_q))
        await svc.allowed(consume(root_q))
        assert await svc.allowed(publish("replies", x_replies))
        # Through its exchange a service reaches NS.replies alone: another key is returned.
        for key in (step_q, ingress, web_q, root_q):
            assert not await svc.allowed(publish(key, x_replies))
        # The default exchange (any queue by name), the frontends' exchange, amq.direct:
        # all refused, so no forged dispatch into another service's queue, no notice into
        # a frontend's queue, no client message into NS.ingress.
        for queue in (step_q, web_q, ingress, replies, root_q):
            await svc.refused(publish(queue))
        await svc.refused(publish("ingress", x_ingress))
        await svc.refused(publish(replies, exchange="amq.direct"))
        await svc.refused(declare(replies))  # only the router declares the shared queues
        await svc.refused(declare(ingress))
        await svc.refused(declare(step_q))
        await svc.refused(consume(ingress))
        await svc.refused(consume(replies))
        await svc.refused(bind(x_replies, "forged", root_q))
    async with As(users.url("service-menu")) as svc:
        await svc.allowed(declare(step_q))
        await svc.refused(consume(root_q))  # nor read another service's queue
        await svc.refused(delete(root_q))

    async with As(users.url("frontend-web")) as web:
        await web.allowed(declare(web_q, shared=False))
        await web.allowed(declare(f"{web_q}.extra", shared=False))
        await web.allowed(consume(web_q))
        assert await web.allowed(publish("ingress", x_ingress))
        for key in (replies, root_q, other_q):
            assert not await web.allowed(publish(key, x_ingress))
        for queue in (ingress, replies, root_q, other_q):
            await web.refused(publish(queue))
        await web.refused(publish("replies", x_replies))
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


@pytest.mark.timeout(600)
async def test_what_permissions_cannot_restrict(users: Users) -> None:
    """Pins the limits documented in PERMISSIONS.md, so a change in RabbitMQ shows here."""
    ns = users.ns
    root_q = f"{ns}.service.pizza"
    async with As(users.url("router")) as router:
        await router.allowed(declare(f"{ns}.ingress"))
        await router.allowed(bind(f"{ns}.x.ingress", "ingress", f"{ns}.ingress"))
    async with As(users.url("frontend-web")) as web:
        await web.allowed(declare(f"{ns}.client.web", shared=False))
    async with As(users.url("service-pizza")) as svc:
        await svc.allowed(declare(root_q))
        # Passive declares are not checked: anyone learns whether a queue exists.
        await svc.allowed(passive(f"{ns}.client.web"))
        # Configure on its own queue (to declare it) also allows deleting it.
        await svc.allowed(delete(root_q))
    async with As(users.url("frontend-web")) as web:
        # A frontend may send a client message for any session id: the router cannot tell
        # one frontend's sessions from another's.
        assert await web.allowed(publish("ingress", f"{ns}.x.ingress"))


@pytest.mark.timeout(900)
async def test_the_pizza_flow_runs_on_the_restricted_users(pizza_users: Users,
                                                           e2e: Harness) -> None:
    """The router, every pizza service and a frontend, each as its own user."""
    guest_url = e2e.amqp_url
    e2e.queues.add(f"{pizza_users.ns}.client.web")
    with as_user(e2e, pizza_users.url("router")):
        await e2e.router(ROOT, turn_timeout=10)
    for service in PIZZA:
        with as_user(e2e, pizza_users.url(f"service-{service.name}")):
            await e2e.worker(f"router.demo_flow:{service.name}")
    assert e2e.amqp_url == guest_url

    broker = AmqpBroker(pizza_users.url("frontend-web"), QUEUE_TYPE, name="test-permissions")
    await broker.connect()
    try:
        # A frontend names its reply queue under NS.client.FRONTEND (a generated name is
        # outside its permissions).
        client = Client(broker, pizza_users.ns, reply_queue=f"{pizza_users.ns}.client.web")
        async with client:
            assert await converse(client, "s1") == TRANSCRIPT.read_text()
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            await Client(broker, pizza_users.ns).start()
    finally:
        await broker.close()
    for proc in e2e.procs:
        assert "ACCESS_REFUSED" not in proc.output(), proc.output()


async def converse(client: Client, session: str) -> str:
    """Play the demo script; as many notices per line as the reference transcript has, so
    that no wait depends on timing."""
    expected: list[tuple[str, int]] = []
    for line in TRANSCRIPT.read_text().splitlines():
        if line.startswith("> "):
            expected.append((line[2:], 0))
        else:
            text, count = expected[-1]
            expected[-1] = (text, count + 1)
    notices = client.session_notices(session)
    shown: list[str] = []
    try:
        for text, count in expected:
            shown.append(f"> {text}")
            await client.send(session, text)
            for _ in range(count):
                notice = await asyncio.wait_for(anext(notices), 30)
                shown.append(f"{notice.type}:" + (  # quick replies as "text [a] [b]"
                    plain_text(notice.payload) if notice.type == "output"
                    else notice.error.code if notice.error else ""))
    finally:
        await notices.aclose()
    return "\n".join(shown) + "\n"


@contextlib.contextmanager
def as_user(harness: Harness, url: str) -> Iterator[None]:
    """Start the harness's processes with another AMQP URL."""
    saved, harness.amqp_url = harness.amqp_url, url
    try:
        yield
    finally:
        harness.amqp_url = saved


@pytest.mark.timeout(600)
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

