"""Reaching RabbitMQ: a list of node URLs, failover between them, and which errors to retry.

``CLOUDBUNCH_AMQP_URL`` (``--amqp-url``) may name several nodes of one RabbitMQ cluster,
comma-separated. A party connects to the first that answers and, when that node is lost,
reconnects to the next one (round robin). Errors that waiting can cure (a refused or
unreachable node, a timeout) are retried for :data:`CONNECT_TIMEOUT` seconds; errors of the
settings (a refused login, a virtual host that is refused, a TLS failure) are reported at
once, in one line that names the cause and the setting to change.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq
from yarl import URL

from . import amqp_reader
from .errors import BrokerUnavailable, ConfigError
from .urls import redact

log = logging.getLogger("worker_sdk.amqp")

CONNECT_TIMEOUT = 30.0
"""Seconds a party keeps trying to reach RabbitMQ when it starts (the CLI and the SDK alike):
the contract's 30 s to reconnect after a loss."""

HEARTBEAT = 6
"""AMQP heartbeat (s) for a list of several nodes whose URLs do not set ``heartbeat``: aiormq
ends a connection that received no frame for (heartbeat + 1) x 3 s, checked every heartbeat/2,
so a node that stops answering (frozen, or its host gone) is left after 21 to 24 s and the
party reconnects to another within the contract's 30 s. RabbitMQ, for its part, closes a
connection whose client sent nothing for about two heartbeats: a shorter one would cut
clients whose event loop is busy for a few seconds. A single URL keeps aio-pika's default
(60 s): there is no other node to go to."""

ATTEMPT_TIMEOUT = 10.0
"""Longest single connection attempt (TCP, TLS and AMQP handshakes)."""

URL_SETTING = "CLOUDBUNCH_AMQP_URL (--amqp-url)"
SCHEMES = ("amqp", "amqps")


def split_urls(value: str) -> list[str]:
    """The node URLs of a comma-separated setting; ConfigError for an empty or foreign one.

    A comma inside a password must be written ``%2C``.
    """
    urls = [part.strip() for part in value.split(",")]
    if not any(urls):
        raise ConfigError(f"{URL_SETTING} is empty: give one amqp:// or amqps:// URL, or "
                          "several separated by commas")
    for url in urls:
        if not url:
            raise ConfigError(f"{URL_SETTING} has an empty entry between commas: "
                              f"{', '.join(redact(u) for u in urls if u)}")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
        except ValueError as exc:
            raise ConfigError(f"{URL_SETTING}: {redact(url)} is not a valid URL ({exc})") \
                from None
        if parts.scheme.lower() not in SCHEMES or not parts.hostname:
            raise ConfigError(f"{URL_SETTING}: each URL must be amqp://HOST... or "
                              f"amqps://HOST..., not {url.split('@')[-1]!r}")
    return urls


def _with_heartbeat(url: str, several: bool) -> URL:
    parsed = URL(url)
    if "heartbeat" in parsed.query or not several:
        return parsed
    return parsed.update_query(heartbeat=str(HEARTBEAT))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _reason(exc: BaseException) -> str:
    """A short reason: aiormq wraps socket errors as (errno, text)."""
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return args[1]
    return _one_line(exc)


def refusal(exc: BaseException, url: str) -> ConfigError | None:
    """The error to report at once if ``exc`` is one that retrying cannot cure, else None."""
    parts = urlsplit(url)
    where = redact(url)
    user = unquote(parts.username or "guest")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    for error in _chain(exc):
        if isinstance(error, ssl.SSLError) or "[SSL" in str(error):
            hint = ("the port does not speak TLS (use amqp:// or RabbitMQ's TLS port, "
                    "usually 5671)" if "WRONG_VERSION_NUMBER" in str(error) else
                    "set the CA that signed the broker's certificate with ?cafile=PATH, or "
                    "connect to a name the certificate is for")
            if parts.scheme.lower() == "amqp":
                hint = "use amqps:// for a TLS port"
            return ConfigError(f"TLS with RabbitMQ at {where} failed ({_reason(error)}): "
                               f"{hint}; set {URL_SETTING}")
    text = _one_line(exc)
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError) and \
            "ACCESS_REFUSED" in text:
        return ConfigError(f"RabbitMQ at {where} refused the login of user {user!r} "
                           f"(ACCESS_REFUSED: wrong user name or password): correct them in "
                           f"{URL_SETTING}")
    if isinstance(exc, aiormq.exceptions.InvalidFrameError) and "Connection.Close" in text:
        return ConfigError(f"RabbitMQ at {where} refused to open virtual host {vhost!r} for "
                           f"user {user!r} (it does not exist, or the user has no permission "
                           f"on it): correct the path of {URL_SETTING} ('/' is written %2F) "
                           "or grant the user access to that virtual host")
    return None


RETRYABLE: tuple[type[BaseException], ...] = (
    TimeoutError, OSError, aiormq.exceptions.AMQPError, RuntimeError)
"""Errors of a connection attempt that may be retried (unless :func:`refusal` says no)."""


class _CoalescingWriter:
    """A stream writer that sends the frames written in one event-loop turn in one write.

    aiormq writes every frame (a publish, an ack) with its own ``write``: a system call
    each. Here the writes of one turn of the loop are joined and sent at the end of it, in
    order; ``drain`` and ``close`` send what is pending first."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()
        self.frames = 0
        """Writes asked for (one per frame, or per frames aiormq marshalled together)."""
        self.sent = 0
        """Writes made to the socket."""

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)
        self.frames += 1

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending = []
        if not self._writer.is_closing():
            self._writer.write(data)
            self.sent += 1

    async def drain(self) -> None:
        self._flush()
        await self._writer.drain()

    def close(self) -> None:
        self._flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class _CoalescingTransport(aiormq.TransportFactory):
    """aiormq's TCP or TLS transport (as the URL says), its writer coalescing frames; the
    connection reads its frames in bulk (:mod:`worker_sdk.amqp_reader`)."""

    writer: _CoalescingWriter | None = None
    """The writer of the latest connection made."""

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, Any]:
        factory: aiormq.TransportFactory = (
            aiormq.connection.TLSTransportFactory() if url.scheme == "amqps"
            else aiormq.connection.TCPTransportFactory())
        reader, writer = await factory.create(url, **kwargs)
        amqp_reader.install()  # aiormq builds the connection's frame receiver next
        self.writer = _CoalescingWriter(writer)
        return reader, self.writer


class FailoverConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection over several node URLs: every new connection attempt
    (the first, and each one after a loss) goes to the next URL of the list. Its frames are
    coalesced per event-loop turn (:class:`_CoalescingWriter`)."""

    def __init__(self, urls: Sequence[URL], **kwargs: Any) -> None:
        self._urls = list(urls)
        self._next = 0
        self._rotating = False
        super().__init__(self._urls[0], **kwargs)
        # aio-pika passes its own parameters only; aiormq takes this one by name.
        self.kwargs["transport_factory"] = _CoalescingTransport()
        self._rotating = True

    # aio-pika sets ``transport`` to None right before every connection attempt (and reads
    # ``self.url`` for it): that is where the next node is chosen.
    @property  # type: ignore[override]
    def transport(self) -> Any:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        if value is None and self._rotating:
            self.url = self._urls[self._next % len(self._urls)]
            self._next += 1
        self.__dict__["_transport"] = value

    @property
    def current_url(self) -> str:
        """The URL of the node this connection uses (or tries) now, password redacted."""
        return display(self.url)


def display(url: Any) -> str:
    """A node URL for logs: password redacted, without the heartbeat added here."""
    parsed = URL(str(url))
    if parsed.query.get("heartbeat") == str(HEARTBEAT):
        parsed = parsed.without_query_params("heartbeat")
    return redact(str(parsed))


async def connect_any(urls: Sequence[str], *, name: str,
                      timeout: float = CONNECT_TIMEOUT) -> FailoverConnection:
    """Connect to the first node that answers, trying the list again for ``timeout`` s.

    Raises ConfigError at once for a refused login, vhost or TLS handshake, and
    BrokerUnavailable after ``timeout`` seconds of nodes that do not answer.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.1
    told = False
    while True:
        reasons: list[str] = []
        for index in range(len(urls)):
            ordered = [_with_heartbeat(u, len(urls) > 1) for u in (*urls[index:], *urls[:index])]
            connection = FailoverConnection(
                ordered, client_properties={"connection_name": name}, reconnect_interval=1)
            attempt = max(0.1, min(ATTEMPT_TIMEOUT, deadline - loop.time()))
            try:
                await asyncio.wait_for(connection.connect(timeout=attempt), attempt + 1)
                return connection
            except RETRYABLE as exc:
                await _discard(connection)
                refused = refusal(exc, urls[index])
                if refused is not None:
                    raise refused from None
                reasons.append(f"{redact(urls[index])}: {_reason(exc)}")
                log.debug("event=connect_retry url=%s reason=%s", redact(urls[index]),
                          _one_line(exc))
            except BaseException:
                await _discard(connection)
                raise
        left = deadline - loop.time()
        if left <= 0:
            raise BrokerUnavailable(
                f"RabbitMQ is not reachable ({'; '.join(reasons)}) after trying for "
                f"{timeout:g} s: start it or correct {URL_SETTING}")
        if not told:
            told = True
            log.warning("event=broker_unreachable %s; retrying for %.0f s",
                        " ".join(f"url={r}" for r in reasons), left)
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, 2.0)


async def _discard(connection: FailoverConnection) -> None:
    try:
        await connection.close()
    except Exception as exc:  # a half-open connection may fail to close: it is gone anyway
        log.debug("event=discard_failed reason=%s", _one_line(exc))


class _LibraryNoise(logging.Filter):
    """aio-pika and aiormq log every failed reconnect attempt, often with a traceback; the
    broker's own lines (lost, reconnected, giving up) say what matters. Their records below
    CRITICAL become debug records, shown only when ``worker_sdk.amqp`` logs at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return log.isEnabledFor(logging.DEBUG)


_NOISE = _LibraryNoise()


def quiet_library_logs() -> None:
    """Install the filter above on every aio-pika and aiormq logger (idempotent).

    A logger's filters see only the records of that logger, not of its children, so each
    module logger of the two libraries (all created when they are imported) gets it.
    """
    names = [name for name in logging.root.manager.loggerDict
             if name.split(".")[0] in ("aiormq", "aio_pika")]
    for name in ("aiormq", "aio_pika", *names):
        logger = logging.getLogger(name)
        if _NOISE not in logger.filters:
            logger.addFilter(_NOISE)
