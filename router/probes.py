"""Operator options shared by ``cloudbunch router`` and ``cloudbunch worker`` (metrics port,
log format), and the router's /metrics, /healthz, /readyz server."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker_sdk.errors import ConfigError
from worker_sdk.exposition import ProbeServer, metrics_port
from worker_sdk.logs import FORMATS, LogFormat, check_format

if TYPE_CHECKING:
    from .app import Router


@dataclass(frozen=True, slots=True)
class ProcessOptions:
    """Where metrics are served (None: off) and how logs are written."""

    metrics_port: int | None = None
    log_format: LogFormat = "text"


def add_process_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", metavar="PORT",
                        help="serve /metrics, /healthz and /readyz on this port "
                             "[env CLOUDBUNCH_METRICS_PORT; default off]")
    parser.add_argument("--log-format", metavar="FORMAT", choices=FORMATS,
                        help="'text' (key=value) or 'json' (one object a line) "
                             "[env CLOUDBUNCH_LOG_FORMAT; default text]")


def process_options(args: argparse.Namespace,
                    env: Mapping[str, str] | None = None) -> ProcessOptions:
    env = os.environ if env is None else env
    port = getattr(args, "metrics_port", None)
    fmt = getattr(args, "log_format", None)
    return ProcessOptions(
        metrics_port=metrics_port(port if port is not None else env.get(
            "CLOUDBUNCH_METRICS_PORT")),
        log_format=check_format(fmt or env.get("CLOUDBUNCH_LOG_FORMAT") or "text"))


async def start_router_probes(router: Router, port: int) -> ProbeServer:
    """Serve the router's metrics and probes; count the broker's outages as they happen."""
    metrics = router.metrics
    assert metrics is not None, "the router was made without metrics"
    server = ProbeServer(port, metrics.registry, router.not_ready)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on port {port}: {exc.strerror or exc}; "
                          "choose another --metrics-port / CLOUDBUNCH_METRICS_PORT") from None
    # Told by the connection itself, not polled: a local broker is back within a second, an
    # outage shorter than a poll's period would go uncounted.
    router.broker.on_state(lambda up: metrics.dependency("rabbitmq", up))
    return server
