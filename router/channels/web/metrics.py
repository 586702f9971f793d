"""Prometheus metrics of a web gateway replica, served at ``/metrics`` beside the page.

Labels are bounded (refusal codes); never a session.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics


class WebMetrics:
    """The gateway's metrics, in their own registry (one per gateway)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.sockets = Gauge("cloudbunch_web_sockets", "Open page sockets", registry=r)
        self.relayed = Counter("cloudbunch_web_notices_relayed",
                               "Notices appended to a conversation's history", registry=r)
        self.duplicates = Counter("cloudbunch_web_notices_duplicate",
                                  "Notices delivered again and not appended twice", registry=r)
        self.forwarded = Counter("cloudbunch_web_messages_forwarded",
                                 "Messages and ends from pages published to the router",
                                 registry=r)
        self.refused = Counter("cloudbunch_web_frames_refused",
                               "Frames from pages refused, by code", ["code"], registry=r)
        self.replaced = Counter("cloudbunch_web_sockets_replaced",
                                "Sockets closed because the session opened elsewhere",
                                registry=r)
