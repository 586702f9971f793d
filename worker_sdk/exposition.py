"""A small HTTP server for operators: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``.

Routers and workers start it when ``--metrics-port`` / ``CLOUDBUNCH_METRICS_PORT`` is set.
It runs on the process's event loop and needs no web framework: three GET routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:  # prometheus_client is imported when metrics are served, not before
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

Readiness = Callable[[], str | None]
"""Returns None when ready, else one line saying why not."""

_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class ProbeServer:
    """Serves ``/metrics`` from ``registry``, ``/healthz`` (the process answers) and
    ``/readyz`` (``ready()`` returns None) on ``host:port``."""

    def __init__(self, port: int, registry: CollectorRegistry, ready: Readiness, *,
                 host: str = "0.0.0.0") -> None:
        self.port = port
        self.host = host
        self.registry = registry
        self.ready = ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sockets = self._server.sockets
        if sockets and self.port == 0:
            self.port = int(sockets[0].getsockname()[1])
        log.info("event=metrics_listening port=%d", self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        """Status, content type and body for one request."""
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            why = self.ready()
            if why is None:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {why}\n".encode()
        return 404, "text/plain", b"try /metrics, /healthz or /readyz\n"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 10.0)
            while (await asyncio.wait_for(reader.readline(), 10.0)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing here needs them
            parts = request.decode("latin-1").split()
            if len(parts) < 2:
                return
            status, kind, body = self.answer(parts[0], parts[1])
            head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            writer.write(head if parts[0] == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        except Exception:
            log.exception("event=metrics_request_failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def metrics_port(raw: str | None,
                 where: str = "--metrics-port / CLOUDBUNCH_METRICS_PORT") -> int | None:
    """The port setting: None (off) when unset or empty; ConfigError when not a port."""
    if raw is None or str(raw).strip() == "":
        return None
    try:
        port = int(raw)
    except ValueError:
        raise ConfigError(f"{where} must be a port number, not {raw!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{where} must be between 0 and 65535, not {port}")
    return port
