"""Reaching RabbitMQ: node lists, failover when a node is lost or frozen, and one clear line
(at once, or after the retry time) for each kind of connection error.

A "node" here is a TCP proxy to the shared RabbitMQ: losing it cuts only this test's own
connections.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from router import cli
from tests.integration.procs import eventually
from tests.integration.tcp_proxy import TcpProxy
from worker_sdk.amqp import AmqpBroker
from worker_sdk.amqp_connect import CONNECT_TIMEOUT, split_urls
from worker_sdk.broker import Delivery, Outgoing
from worker_sdk.errors import BrokerUnavailable, ConfigError
from worker_sdk.urls import redact

pytestmark = pytest.mark.infra

LIBRARIES = ("aiormq", "aio_pika")


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return parts._replace(netloc=netloc).geturl()


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or 'guest'}:{password}@{host}").geturl()


@pytest.fixture
async def proxies(amqp_url: str) -> AsyncIterator[list[TcpProxy]]:
    port = urlsplit(amqp_url.split(",")[0]).port or 5672
    made = [await TcpProxy(port).start() for _ in range(2)]
    try:
        yield made
    finally:
        for proxy in made:
            await proxy.close()


@pytest.fixture
async def watcher(amqp_url: str) -> AsyncIterator[AmqpBroker]:
    broker = AmqpBroker(amqp_url, connect_timeout=10, name="test-connect-watcher")
    await broker.connect()
    try:
        yield broker
    finally:
        await broker.close()


def test_one_connect_time_for_cli_and_sdk() -> None:
    assert cli.CONNECT_TIMEOUT == CONNECT_TIMEOUT == 30.0
    assert AmqpBroker("amqp://h/").connect_timeout == CONNECT_TIMEOUT


def test_every_password_of_a_list_is_redacted() -> None:
    assert redact("amqp://u:p1@a/,amqp://v:p2@b:5673/x") == "amqp://u:***@a/,amqp://v:***@b:5673/x"


def test_url_lists() -> None:
    assert split_urls("amqp://a/, amqps://u:p@b:5671/v") == ["amqp://a/", "amqps://u:p@b:5671/v"]
    for bad, says in (("", "is empty"), ("amqp://a/,,amqp://b/", "empty entry"),
                      ("amqp://a/,redis://b/", "'redis://b/'"), ("amqp://a:x/", "not a valid URL"),
                      ("amqp:///", "amqp://HOST")):
        with pytest.raises(ConfigError, match=says):
            split_urls(bad)


async def test_a_node_that_refuses_is_skipped(amqp_url: str, caplog: pytest.LogCaptureFixture) \
        -> None:
    caplog.set_level(logging.INFO)
    good = amqp_url.split(",")[0]
    broker = AmqpBroker(f"{with_port(good, 1)},{good}", connect_timeout=10)
    await broker.connect()
    try:
        assert broker.node_url is not None
        assert urlsplit(broker.node_url).port == urlsplit(good).port
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await broker.close()


async def _round_trip(broker: AmqpBroker, queue: str, seen: list[bytes], body: bytes) -> bool:
    try:
        if await broker.publish([Outgoing(queue, body, message_id=body.decode())]) != [True]:
            return False
    except Exception:
        return False
    return body in seen


async def _fail_over(amqp_url: str, namespace: str, proxies: list[TcpProxy],
                     watcher: AmqpBroker, caplog: pytest.LogCaptureFixture,
                     lose: str) -> None:
    caplog.set_level(logging.INFO)
    good = amqp_url.split(",")[0]
    urls = ",".join(proxy.url(good) for proxy in proxies)
    broker = AmqpBroker(urls, connect_timeout=10, give_up_after=60, name=f"test {namespace}")
    queue = f"{namespace}.failover"
    await broker.connect()
    try:
        assert broker.node_url is not None and f":{proxies[0].port}/" in broker.node_url
        await broker.declare(queue)
        seen: list[bytes] = []

        async def handler(delivery: Delivery) -> None:
            seen.append(delivery.body)
            await delivery.ack()

        await broker.consume(queue, handler, prefetch=5)
        await eventually(lambda: _round_trip(broker, queue, seen, b"before"), timeout=10)
        if lose == "kill":
            await proxies[0].cut()
        else:
            proxies[0].freeze()
        lost = time.monotonic()
        # The contract: consuming again within 30 s, through the other node.
        await eventually(lambda: _round_trip(broker, queue, seen, b"after"), timeout=30,
                         what="a round trip through the second node")
        back = time.monotonic() - lost
        assert broker.node_url is not None and f":{proxies[1].port}/" in broker.node_url
        assert await watcher.consumer_count(queue) == 1
        logging.getLogger(__name__).info("failover after %s: %.1f s", lose, back)
    finally:
        proxies[0].thaw()
        await broker.delete(queue)
        await broker.close()
    ours = [r for r in caplog.records if r.name == "worker_sdk.amqp"]
    reconnected = [r for r in ours if "event=broker_reconnected" in r.getMessage()]
    assert len(reconnected) == 1 and reconnected[0].levelno == logging.INFO
    assert f":{proxies[1].port}/" in reconnected[0].getMessage()
    assert len([r for r in ours if "event=broker_connection_lost" in r.getMessage()]) == 1
    noisy = [r for r in caplog.records if r.name.split(".")[0] in LIBRARIES
             and r.levelno > logging.DEBUG]
    assert not noisy, [r.getMessage() for r in noisy]
    assert not [r for r in caplog.records if r.exc_info and r.levelno > logging.DEBUG]


async def test_a_lost_node_is_replaced_by_the_next(amqp_url: str, namespace: str,
                                                   proxies: list[TcpProxy], watcher: AmqpBroker,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    await _fail_over(amqp_url, namespace, proxies, watcher, caplog, "kill")


async def test_a_frozen_node_is_replaced_after_the_heartbeat(
        amqp_url: str, namespace: str, proxies: list[TcpProxy], watcher: AmqpBroker,
        caplog: pytest.LogCaptureFixture) -> None:
    await _fail_over(amqp_url, namespace, proxies, watcher, caplog, "freeze")


async def _refused(url: str) -> tuple[str, float]:
    broker = AmqpBroker(url, connect_timeout=20)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        await broker.connect()
    took = time.monotonic() - started
    assert took < 10, f"retried for {took:.1f} s an error that retrying cannot cure"
    text = str(info.value)
    assert "\n" not in text and "CLOUDBUNCH_AMQP_URL (--amqp-url)" in text
    return text, took


async def test_wrong_password_is_reported_at_once(amqp_url: str) -> None:
    url = with_password(amqp_url.split(",")[0], "n0t-the-password")
    text, _ = await _refused(url)
    assert "refused the login of user" in text and "ACCESS_REFUSED" in text
    assert "n0t-the-password" not in text


async def test_wrong_vhost_is_reported_at_once(amqp_url: str) -> None:
    url = urlsplit(amqp_url.split(",")[0])._replace(path="/no-such-vhost").geturl()
    text, _ = await _refused(url)
    assert "refused to open virtual host 'no-such-vhost'" in text
    assert "Connection.Close" not in text


async def test_tls_to_a_plain_port_is_reported_at_once(amqp_url: str) -> None:
    url = "amqps://" + amqp_url.split(",")[0].split("://", 1)[1]
    text, _ = await _refused(url)
    assert text.startswith("TLS with RabbitMQ at amqps://") and "does not speak TLS" in text


async def test_untrusted_certificate_is_reported_at_once(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        text, _ = await _refused(f"amqps://guest:guest@127.0.0.1:{port}/")
    finally:
        server.close()
    assert "certificate verify failed" in text and "?cafile=PATH" in text


async def test_a_closed_port_is_retried_then_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    broker = AmqpBroker("amqp://guest:s3cret@127.0.0.1:1/", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        await broker.connect()
    assert time.monotonic() - started >= 2
    text = str(info.value)
    assert text.startswith("RabbitMQ is not reachable (amqp://guest:***@127.0.0.1:1/: ")
    assert text.endswith("after trying for 2 s: start it or correct CLOUDBUNCH_AMQP_URL "
                         "(--amqp-url)")
    assert "s3cret" not in text
    retrying = [r.getMessage() for r in caplog.records if "retrying for" in r.getMessage()]
    assert len(retrying) == 1 and retrying[0].endswith("retrying for 2 s")
