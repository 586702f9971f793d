"""``cloudbunch status``: one screen for an operator, and an exit code for a script.

Every service queue with its depth and consumers, the routers' ingress and replies, NS.dead
with the reasons of its dead letters (peeked: they stay in the queue). Queues are found through
the RabbitMQ management API when it answers, else by passive declares of the shared queues
and of the services named with ``--service``. With ``--metrics-url`` (each router's
/metrics), turns per second by service. The screen says where its rates come from, or why
they are missing. Exit status 1 when something needs a person: a queue
with messages and no consumer, or dead letters growing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from worker_sdk import wire
from worker_sdk.amqp import AmqpBroker
from worker_sdk.amqp_connect import split_urls
from worker_sdk.urls import redact

from .partitions import partition_queues

log = logging.getLogger(__name__)

PEEK = 100
"""Dead letters read (and left in place) to summarise their reasons."""

_PARTITION = re.compile(r"(ingress|replies)\.\d{1,3}")
"""A partition's queue, after the namespace's prefix (``--partitions``)."""


@dataclass(slots=True)
class QueueInfo:
    name: str
    messages: int | None
    """Ready messages; None when the queue does not exist."""
    consumers: int
    publish_rate: float | None = None
    deliver_rate: float | None = None


@dataclass(slots=True)
class Sample:
    """What one look at the broker saw."""

    queues: dict[str, QueueInfo]
    source: str
    turns: dict[str, float] = field(default_factory=dict)
    """Turns counted so far per service, from the routers' metrics."""


@dataclass(slots=True)
class Report:
    namespace: str
    before: Sample
    after: Sample
    seconds: float
    dead_reasons: Counter[str]
    latest_dead: list[str]
    problems: list[str]


def service_of(namespace: str, queue: str) -> str | None:
    prefix = f"{namespace}.service."
    return queue[len(prefix):] if queue.startswith(prefix) else None


def assess(namespace: str, before: Sample, after: Sample, seconds: float) -> list[str]:
    """What needs a person, one line each (empty: nothing)."""
    names = wire.queue_names(namespace)
    problems: list[str] = []
    for queue in sorted(after.queues.values(), key=lambda q: q.name):
        if queue.messages is None:
            service = service_of(namespace, queue.name)
            if service is not None:
                problems.append(f"no queue for service {service}: none of its workers has "
                                "started (dispatches to it fail with unknown_service)")
            elif queue.name != names["dead"]:
                problems.append(f"queue {queue.name} does not exist: no router has started")
            continue
        if queue.name == names["dead"] or queue.consumers or not queue.messages:
            continue
        service = service_of(namespace, queue.name)
        who = f"workers for {service}" if service is not None else "router consuming"
        problems.append(f"no {who}: {queue.messages} messages waiting in {queue.name}")
    dead_then = before.queues.get(names["dead"])
    dead_now = after.queues.get(names["dead"])
    if dead_now is not None and dead_now.messages:
        grew = dead_then is not None and dead_then.messages is not None and \
            dead_now.messages > dead_then.messages
        if grew:
            assert dead_then is not None and dead_then.messages is not None
            problems.append(f"dead letters growing: +{dead_now.messages - dead_then.messages} "
                            f"in {seconds:.1f} s ({names['dead']} holds {dead_now.messages})")
        elif dead_now.publish_rate:
            problems.append(f"dead letters growing: {dead_now.publish_rate:.2f}/s into "
                            f"{names['dead']}")
    return problems


class Inspector:
    """Reads queue depths and consumers from the management API or by passive declares."""

    def __init__(self, broker: AmqpBroker, namespace: str, services: list[str],
                 management_url: str | None, metrics_urls: list[str],
                 partitions: int = 0) -> None:
        self.broker = broker
        self.namespace = namespace
        self.partitions = partitions
        self.services = services
        self.management_url = management_url
        self.metrics_urls = metrics_urls
        self.management_error: str | None = None
        self.metrics_errors: dict[str, str] = {}
        """The --metrics-url that did not answer (or gave no metrics), and why."""

    def _shared(self) -> list[str]:
        names = wire.queue_names(self.namespace)
        return [names["ingress"], names["replies"], names["dead"]] + [
            q.name for q in partition_queues(self.namespace, self.partitions)]

    async def sample(self) -> Sample:
        queues = await asyncio.to_thread(self._from_management)
        source = "management API"
        if queues is None:
            source = "passive declares"
            queues = {}
            for name in self._shared() + [wire.service_queue(self.namespace, s)
                                          for s in self.services]:
                queues[name] = await self._passive(name)
        else:
            for name in self._shared() + [wire.service_queue(self.namespace, s)
                                          for s in self.services]:
                queues.setdefault(name, QueueInfo(name, None, 0))
        turns = await asyncio.to_thread(self._turns)
        return Sample(queues, source, turns)

    async def _passive(self, name: str) -> QueueInfo:
        stats = await self.broker.queue_stats(name)
        if stats is None:
            return QueueInfo(name, None, 0)
        return QueueInfo(name, *stats)

    def _from_management(self) -> dict[str, QueueInfo] | None:
        if not self.management_url:
            return None
        try:
            rows = management_queues(self.management_url, self.broker.url)
        except ManagementUnavailable as exc:
            self.management_error = str(exc)
            return None
        prefix = self.namespace + "."
        found: dict[str, QueueInfo] = {}
        for row in rows:
            name = row.get("name", "")
            if not name.startswith(prefix):
                continue
            if name not in self._shared() and service_of(self.namespace, name) is None and (
                    not _PARTITION.fullmatch(name[len(prefix):])):
                continue
            stats = row.get("message_stats") or {}
            found[name] = QueueInfo(
                name, int(row.get("messages_ready") or 0), int(row.get("consumers") or 0),
                (stats.get("publish_details") or {}).get("rate"),
                (stats.get("deliver_get_details") or {}).get("rate"))
        return found

    def _turns(self) -> dict[str, float]:
        from prometheus_client.parser import text_string_to_metric_families

        totals: dict[str, float] = {}
        for url in self.metrics_urls:
            try:
                with urllib.request.urlopen(url, timeout=3) as response:
                    text = response.read().decode()
            except (OSError, urllib.error.URLError, UnicodeDecodeError) as exc:
                self.metrics_errors[url] = str(getattr(exc, "reason", exc))
                continue
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError as exc:
                self.metrics_errors[url] = f"not Prometheus metrics ({exc})"
                continue
            if not any(f.name.startswith("cloudbunch_router_") for f in families):
                self.metrics_errors[url] = "no cloudbunch_router_* metrics there (a router's " \
                    "/metrics?)"
                continue
            self.metrics_errors.pop(url, None)
            for family in families:
                if family.name != "cloudbunch_router_turns":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        key = sample.labels.get("service", "")
                        totals[key] = totals.get(key, 0.0) + sample.value
        return totals


async def collect(broker: AmqpBroker, namespace: str, services: list[str], *,
                  management_url: str | None = None, metrics_urls: list[str] | None = None,
                  interval: float = 1.0, partitions: int = 0) -> tuple[Report, Inspector]:
    """Two samples ``interval`` seconds apart, the dead letters' reasons, the problems.
    ``partitions``: the namespace's ``--partitions``, whose queues are listed too (the
    management API lists them whatever it is)."""
    inspector = Inspector(broker, namespace, services, management_url, metrics_urls or [],
                          partitions)
    started = time.monotonic()
    before = await inspector.sample()
    await asyncio.sleep(interval)
    after = await inspector.sample()
    seconds = time.monotonic() - started
    reasons: Counter[str] = Counter()
    latest: list[str] = []
    dead = wire.queue_names(namespace)["dead"]
    if (after.queues.get(dead) or QueueInfo(dead, None, 0)).messages:
        for headers, _body in await broker.peek(dead, PEEK):
            reason = str(headers.get("x-cb-reason", "?"))
            reasons[reason] += 1
            latest.append(f"{reason} from {headers.get('x-cb-source-queue', '?')}: "
                          f"{headers.get('x-cb-detail', '')}")
    report = Report(namespace, before, after, seconds, reasons, latest[-3:],
                    assess(namespace, before, after, seconds))
    return report, inspector


def render(report: Report, inspector: Inspector, url: str) -> str:
    names = wire.queue_names(report.namespace)
    lines = [f"CloudBunch namespace {report.namespace!r} on {redact(url)} "
             f"(queues by {report.after.source})"]
    lines.extend(f"  {note}" for note in rate_notes(report, inspector))
    turns = len(inspector.metrics_urls) > len(inspector.metrics_errors)
    rates = report.after.source == "management API"
    head = f"{'QUEUE':<40} {'READY':>7} {'CONSUMERS':>9}"
    head += f" {'IN/S':>7}" if rates else ""
    head += f" {'TURNS/S':>8}" if turns else ""
    lines.append(head)
    order = [names["ingress"], names["replies"]]
    order += sorted(n for n in report.after.queues if n not in (*order, names["dead"]))
    order.append(names["dead"])
    for name in order:
        q = report.after.queues[name]
        ready = "absent" if q.messages is None else str(q.messages)
        line = f"{name:<40} {ready:>7} {q.consumers:>9}"
        if rates:
            line += f" {'' if q.publish_rate is None else f'{q.publish_rate:.1f}':>7}"
        service = service_of(report.namespace, name)
        if turns:
            per_s = ""
            if service is not None:
                done = report.after.turns.get(service, 0.0) - report.before.turns.get(service,
                                                                                      0.0)
                per_s = f"{done / report.seconds:.1f}"
            line += f" {per_s:>8}"
        if q.messages and not q.consumers and name != names["dead"]:
            line += f"   <- no workers for {service}" if service else "   <- no consumer"
        lines.append(line)
    if report.dead_reasons:
        seen = sum(report.dead_reasons.values())
        summary = ", ".join(f"{r} x{n}" for r, n in report.dead_reasons.most_common())
        lines.append(f"dead letters (the {seen} oldest, left in place): {summary}")
        lines.extend(f"  {line}" for line in report.latest_dead)
    if report.problems:
        lines.append("needs a person:")
        lines.extend(f"  {p}" for p in report.problems)
    else:
        lines.append("nothing needs a person")
    return "\n".join(lines)


def rate_notes(report: Report, inspector: Inspector) -> list[str]:
    """Where the IN/S and TURNS/S columns come from, or why they are missing: one line each."""
    notes = []
    if report.after.source == "management API":
        notes.append("IN/S: messages published into the queue per second, from the management "
                     "API (RabbitMQ's own figures, refreshed every 5 s by default)")
    elif inspector.management_url is None:
        notes.append("no IN/S: the management API is off (--management-url off); it gives each "
                     "queue's publish rate and lists every service queue")
    else:
        notes.append(f"no IN/S: the management API did not answer at "
                     f"{inspector.management_url} ({inspector.management_error}); without it "
                     "only the shared queues and each --service NAME are listed")
    if not inspector.metrics_urls:
        notes.append("no TURNS/S: pass each router's /metrics with --metrics-url (a router "
                     "serves it when started with --metrics-port PORT)")
        return notes
    answered = len(inspector.metrics_urls) - len(inspector.metrics_errors)
    if answered:
        whose = "1 router's" if answered == 1 else f"{answered} routers'"
        notes.append(f"TURNS/S: turns decided per second by service, from {whose} /metrics "
                     f"over {report.seconds:.1f} s")
    notes.extend(f"no TURNS/S from {url}: {why}"
                 for url, why in inspector.metrics_errors.items())
    return notes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cloudbunch status`` (besides --amqp-url and --namespace)."""
    parser.add_argument("--service", action="append", default=[], metavar="NAME",
                        help="a service whose queue to show (repeatable); the management API, "
                             "when it answers, lists them all")
    parser.add_argument("--management-url", metavar="URL",
                        help="RabbitMQ management API [env CLOUDBUNCH_MANAGEMENT_URL; default "
                             "http://HOST:15672 of the AMQP URL; 'off' to skip]")
    parser.add_argument("--metrics-url", action="append", default=[], metavar="URL",
                        help="a router's /metrics, for turns per second (repeatable)")
    parser.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="time between the two samples that show growth [default 1]")


class ManagementUnavailable(Exception):
    """The management API did not answer, refused, or answered something else (why)."""


def management_queues(management_url: str, amqp_url: str) -> list[dict[str, Any]]:
    """The queues of the AMQP URL's virtual host, as the management API lists them (name,
    ready messages, consumers, rates), asked with the AMQP URL's credentials. Raises
    ManagementUnavailable when the API does not answer or refuses."""
    url = management_url.rstrip("/") + "/api/queues?columns=name,vhost,messages_ready," \
        "consumers,message_stats"
    amqp = urllib.parse.urlsplit(split_urls(amqp_url)[0])
    vhost = urllib.parse.unquote(amqp.path[1:]) if len(amqp.path) > 1 else "/"
    request = urllib.request.Request(url)
    # The AMQP URL's user and password are percent-encoded; the API wants them as they are.
    user = urllib.parse.unquote(amqp.username or "guest")
    password = urllib.parse.unquote(amqp.password or "guest")
    request.add_header("Authorization",
                       "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            rows = json.load(response)
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        raise ManagementUnavailable(str(getattr(exc, "reason", exc))) from None
    if not isinstance(rows, list):
        raise ManagementUnavailable("the management API did not answer with a list of queues")
    return [row for row in rows if isinstance(row, dict) and row.get("vhost", "/") == vhost]


def management_url(option: str | None, env: str | None, amqp_url: str) -> str | None:
    value = option or env
    if value == "off":
        return None
    if value:
        return value
    host = urllib.parse.urlsplit(amqp_url).hostname or "127.0.0.1"
    return f"http://{host}:15672"


async def run_status(amqp_url: str, namespace: str, args: argparse.Namespace,
                     env_management: str | None = None, partitions: int = 0) -> int:
    """Print the screen; return 1 when something needs a person."""
    broker = AmqpBroker(amqp_url, name="cloudbunch-status")
    await broker.connect()
    try:
        report, inspector = await collect(
            broker, namespace, list(args.service),
            management_url=management_url(args.management_url, env_management, amqp_url),
            metrics_urls=list(args.metrics_url), interval=max(0.0, args.interval),
            partitions=partitions)
    finally:
        await broker.close()
    print(render(report, inspector, amqp_url))
    return 1 if report.problems else 0
