"""How ``cloudbunch status`` judges what it saw, and reads the management API (real answers
of RabbitMQ's, served by a stand-in) and routers' /metrics. The screen is tested on RabbitMQ."""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest

from router.metrics import RouterMetrics
from router.status import Inspector, QueueInfo, Report, Sample, assess, management_url, render
from worker_sdk.metrics import WorkerMetrics

from .core_harness import Harness


def sample(**depths: tuple[int | None, int]) -> Sample:
    queues = {f"cb.{k.replace('__', '.')}": QueueInfo(f"cb.{k.replace('__', '.')}", m, c)
              for k, (m, c) in depths.items()}
    return Sample(queues, "passive declares")


def test_quiet_system_needs_nobody() -> None:
    s = sample(ingress=(0, 2), replies=(0, 2), dead=(4, 0), service__menu=(3, 1))
    assert assess("cb", s, s, 1.0) == []


def test_growing_dead_letters_need_a_person() -> None:
    before = sample(ingress=(0, 2), replies=(0, 2), dead=(4, 0))
    after = sample(ingress=(0, 2), replies=(0, 2), dead=(6, 0))
    assert assess("cb", before, after, 1.0) == [
        "dead letters growing: +2 in 1.0 s (cb.dead holds 6)"]


def test_dead_letter_rate_from_the_management_api() -> None:
    s = sample(ingress=(0, 2), replies=(0, 2), dead=(4, 0))
    s.queues["cb.dead"].publish_rate = 0.5
    assert assess("cb", s, s, 1.0) == ["dead letters growing: 0.50/s into cb.dead"]


def test_messages_without_consumers_need_a_person() -> None:
    s = sample(ingress=(3, 0), replies=(0, 1), dead=(0, 0), service__menu=(2, 0),
               service__order=(0, 0))
    assert assess("cb", s, s, 1.0) == [
        "no router consuming: 3 messages waiting in cb.ingress",
        "no workers for menu: 2 messages waiting in cb.service.menu"]


def test_management_url_defaults_to_the_broker_host() -> None:
    assert management_url(None, None, "amqp://u:p@rabbit:5672/") == "http://rabbit:15672"
    assert management_url("off", None, "amqp://h/") is None
    assert management_url(None, "http://m:1", "amqp://h/") == "http://m:1"


# ------------------------------------------------------------------ the management API path
#
# management_queues.json holds what RabbitMQ 3.10.8's management API answered to
# GET /api/queues?columns=name,vhost,messages_ready,consumers,message_stats on a node of its
# own (never the shared one), namespace "cap": "healthy" while a router, a worker and a
# frontend ran the tutorial's conversations; "trouble" after the worker stopped with messages
# still coming, and bad client messages going to cap.dead twice a second; a queue of another
# namespace and one of another vhost were added. Real shapes: a queue never published to has
# no message_stats; the client's own queue is listed too.

SHAPES = json.loads((Path(__file__).parent / "management_queues.json").read_text())
AMQP = "amqp://cb-user:s%40cret@127.0.0.1:5672/"


class FakeManagement(ThreadingHTTPServer):
    """Answers like RabbitMQ's management API (and a router's /metrics) on 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.queues: list[dict[str, Any]] = []
        self.metrics = b""
        self.paths: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeManagement

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.path == "/metrics":
            self._send(200, self.server.metrics, "text/plain")
            return
        expected = "Basic " + base64.b64encode(b"cb-user:s@cret").decode()
        if self.headers.get("Authorization") != expected:
            self._send(401, b'{"error":"not_authorized","reason":"Login failed"}',
                       "application/json")
            return
        self._send(200, json.dumps(self.server.queues).encode(), "application/json")

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[FakeManagement]:
    server = FakeManagement()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def inspector(api: FakeManagement, amqp: str = AMQP, *metrics: str) -> Inspector:
    broker = SimpleNamespace(url=amqp)
    return Inspector(broker, "cap", [], api.url, list(metrics))  # type: ignore[arg-type]


def test_queues_and_rates_from_the_management_api(api: FakeManagement) -> None:
    api.queues = SHAPES["healthy"]
    found = inspector(api)._from_management()
    assert found is not None
    assert api.paths == ["/api/queues?columns=name,vhost,messages_ready,consumers,"
                         "message_stats"]
    # The frontend's own queue is not CloudBunch's to show.
    assert sorted(found) == ["cap.dead", "cap.ingress", "cap.replies", "cap.service.ask_name",
                             "cap.service.greeter"]
    assert found["cap.service.greeter"] == QueueInfo("cap.service.greeter", 0, 1, 60.4, 60.4)
    assert found["cap.replies"] == QueueInfo("cap.replies", 0, 1, 80.0, 80.2)
    assert found["cap.dead"] == QueueInfo("cap.dead", 0, 0, None, None)  # no message_stats


def test_partition_queues_are_shown_whatever_the_setting(api: FakeManagement) -> None:
    """A partitioned namespace's queues (``--partitions``) are CloudBunch's: listed by the
    management API even when status is not told the count; a look-alike is not."""
    row = {"name": "cap.ingress.3", "vhost": "/", "messages_ready": 7, "consumers": 2}
    api.queues = [*SHAPES["healthy"], row, {**row, "name": "cap.ingress.x"},
                  {**row, "name": "cap.replies.1000"}]
    found = inspector(api)._from_management()
    assert found is not None
    assert found["cap.ingress.3"] == QueueInfo("cap.ingress.3", 7, 2, None, None)
    assert "cap.ingress.x" not in found and "cap.replies.1000" not in found
    told = Inspector(SimpleNamespace(url=AMQP), "cap", [], None, [],  # type: ignore[arg-type]
                     partitions=2)
    assert told._shared()[3:] == ["cap.ingress.0", "cap.ingress.1", "cap.replies.0",
                                  "cap.replies.1"]


def test_trouble_seen_through_the_management_api(api: FakeManagement) -> None:
    api.queues = SHAPES["trouble"]
    found = inspector(api)._from_management()
    assert found is not None
    # Another vhost's queue of the same name, and another namespace's, are left out.
    assert sorted(found) == ["cap.dead", "cap.ingress", "cap.replies", "cap.service.ask_name",
                             "cap.service.greeter"]
    assert found["cap.service.greeter"] == QueueInfo("cap.service.greeter", 4, 0, 0.0, 0.0)
    assert found["cap.dead"].publish_rate == 2.0
    sample = Sample(found, "management API")
    assert assess("cap", sample, sample, 1.0) == [
        "no workers for greeter: 4 messages waiting in cap.service.greeter",
        "dead letters growing: 2.00/s into cap.dead"]


def test_only_queues_of_the_amqp_urls_vhost(api: FakeManagement) -> None:
    api.queues = SHAPES["trouble"]
    found = inspector(api, "amqp://cb-user:s%40cret@127.0.0.1:5672/other")._from_management()
    assert found is not None and list(found) == ["cap.service.greeter"]
    assert found["cap.service.greeter"] == QueueInfo("cap.service.greeter", 0, 0, None, None)


def test_refused_credentials_fall_back_and_say_why(api: FakeManagement) -> None:
    api.queues = SHAPES["healthy"]
    seen = inspector(api, "amqp://cb-user:wrong@127.0.0.1:5672/")
    assert seen._from_management() is None
    assert seen.management_error == "Unauthorized"


def screen(api: FakeManagement, queues: list[dict[str, Any]], *metrics: str,
           turns: tuple[dict[str, float], dict[str, float]] = ({}, {})) -> str:
    api.queues = queues
    seen = inspector(api, AMQP, *metrics)
    found = seen._from_management()
    source = "management API"
    if found is None:
        source = "passive declares"
        found = {n: QueueInfo(n, 0, 1) for n in ("cap.ingress", "cap.replies", "cap.dead")}
    for url in metrics:
        seen.metrics_urls = [url]
        seen._turns()
    before, after = Sample(found, source, turns[0]), Sample(found, source, turns[1])
    report = Report("cap", before, after, 2.0, Counter(), [], assess("cap", before, after, 2.0))
    return render(report, seen, AMQP)


def test_the_screen_says_where_rates_come_from(api: FakeManagement) -> None:
    api.metrics = generate_latest(RouterMetrics(Harness().cfg).registry)
    out = screen(api, SHAPES["healthy"], api.url + "/metrics",
                 turns=({"greeter": 10.0}, {"greeter": 30.0, "ask_name": 8.0}))
    assert "(queues by management API)" in out
    assert "  IN/S: messages published into the queue per second, from the management API " \
        "(RabbitMQ's own figures, refreshed every 5 s by default)" in out
    assert "  TURNS/S: turns decided per second by service, from 1 router's /metrics over " \
        "2.0 s" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith("cap.")}
    assert rows["cap.service.greeter"] == ["0", "1", "60.4", "10.0"]
    assert rows["cap.service.ask_name"] == ["0", "1", "19.6", "4.0"]
    assert rows["cap.dead"] == ["0", "0"]


def test_the_screen_says_why_rates_are_missing(api: FakeManagement) -> None:
    out = screen(api, SHAPES["healthy"])  # the management API, no --metrics-url
    assert "  no TURNS/S: pass each router's /metrics with --metrics-url (a router serves " \
        "it when started with --metrics-port PORT)" in out
    assert "TURNS/S" not in out.splitlines()[3]  # the table has IN/S only
    api.server_close()  # the management API gone, a /metrics that is not a router's
    gone = screen(api, SHAPES["healthy"], "http://127.0.0.1:1/metrics")
    assert f"  no IN/S: the management API did not answer at {api.url} (" in gone
    assert "without it only the shared queues and each --service NAME are listed" in gone
    assert "  no TURNS/S from http://127.0.0.1:1/metrics: " in gone
    assert "QUEUE" in gone and "IN/S " not in gone.split("QUEUE", 1)[1]


def test_a_metrics_url_without_router_metrics_is_named(api: FakeManagement) -> None:
    api.metrics = generate_latest(WorkerMetrics().registry)
    out = screen(api, SHAPES["healthy"], api.url + "/metrics")
    assert (f"  no TURNS/S from {api.url}/metrics: no cloudbunch_router_* metrics there "
            "(a router's /metrics?)") in out
    metrics = RouterMetrics(Harness().cfg)
    metrics.turns.labels("greeter", "start", "open").inc(3)
    api.metrics = generate_latest(metrics.registry)
    seen = inspector(api, AMQP, api.url + "/metrics")
    assert seen._turns() == {"greeter": 3.0} and not seen.metrics_errors


async def test_purge_lists_every_queue_of_the_namespace_from_the_management_api(
        api: FakeManagement) -> None:
    """``cloudbunch purge`` takes the namespace's queues from the same API: the frontend's
    own queue too (no session names it), never another namespace's or another vhost's."""
    from router.purge import _listed

    api.queues = SHAPES["healthy"] + SHAPES["trouble"]
    names, why_not = await _listed(api.url, AMQP, "cap")
    assert why_not is None
    assert sorted(names) == ["cap.client.d8d7d91940ac", "cap.dead", "cap.ingress",
                             "cap.replies", "cap.service.ask_name", "cap.service.greeter"]
    names, why_not = await _listed(api.url, "amqp://cb-user:wrong@127.0.0.1:5672/", "cap")
    assert names == set() and why_not is not None and "did not answer" in why_not, why_not
    assert await _listed(None, AMQP, "cap") == (
        set(), "the management API is off (--management-url off)")
