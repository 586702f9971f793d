"""Prometheus metrics of a worker process (see docs/operations.md for the list).

Labels are bounded: service names, event and action names, exception class names. Never a
session or a turn.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0)
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                      10.0, 30.0, 60.0, 120.0, 300.0)


class WorkerMetrics:
    """The worker's metrics, registered in their own registry (one per process, or per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # the *_created series only double the scrape
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.deliveries = Counter("cloudbunch_worker_deliveries", "Dispatches received",
                                  ["service"], registry=r)
        self.bad_dispatches = Counter("cloudbunch_worker_bad_dispatches",
                                      "Deliveries that were not a valid dispatch (dropped)",
                                      ["service"], registry=r)
        self.queue_wait = Histogram(
            "cloudbunch_worker_queue_wait_seconds",
            "From the router's publish of a dispatch to a worker taking it (first deliveries)",
            ["service"], buckets=QUEUE_WAIT_BUCKETS, registry=r)
        self.handler_seconds = Histogram(
            "cloudbunch_worker_handler_seconds", "Time in the service's handler, reply built",
            ["service", "event"], buckets=HANDLER_BUCKETS, registry=r)
        self.exceptions = Counter("cloudbunch_worker_handler_exceptions",
                                  "Handlers that raised (the turn fails with code exception)",
                                  ["service", "exception"], registry=r)
        self.replies = Counter("cloudbunch_worker_replies", "Replies published, by action",
                               ["service", "action"], registry=r)
        self.reply_failures = Counter(
            "cloudbunch_worker_reply_failures",
            "Replies that could not be published (the dispatch is handed back)",
            ["service"], registry=r)
        self.in_progress = Gauge("cloudbunch_worker_in_progress",
                                 "Dispatches being handled now", ["service"], registry=r)
        self.prefetch = Gauge("cloudbunch_worker_prefetch",
                              "Dispatches a worker takes at once per service", ["service"],
                              registry=r)
        self.up = Gauge("cloudbunch_worker_broker_up", "1 while connected to RabbitMQ",
                        registry=r)

    def serving(self, service: str, prefetch: int) -> None:
        self.prefetch.labels(service).set(prefetch)
        for metric in (self.deliveries, self.bad_dispatches, self.reply_failures):
            metric.labels(service)
        self.in_progress.labels(service)
        self.queue_wait.labels(service)

    def took(self, service: str, sent_ms: int | None, redelivered: bool) -> None:
        """A dispatch was delivered: observe how long it waited since the router sent it.

        Only first deliveries, whose wait is the queue's alone (a redelivered one was held by
        another worker meanwhile), and only when the router said when it sent it. Measured on
        this host's clock against the router's, so clock skew between hosts adds to it; a
        negative wait (a router's clock ahead) counts as 0."""
        if sent_ms is None or redelivered:
            return
        self.queue_wait.labels(service).observe(max(0.0, time.time() - sent_ms / 1000))

    def handled(self, service: str, event: str, seconds: float,
                exception: BaseException | None) -> None:
        self.handler_seconds.labels(service, event).observe(seconds)
        if exception is not None:
            self.exceptions.labels(service, type(exception).__name__).inc()
