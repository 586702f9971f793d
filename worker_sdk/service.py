"""What a service author writes: a :class:`Service` with handlers, and a :class:`Context`.

Decorators only record handlers; nothing connects until :meth:`Service.serve` or
:meth:`Service.run`. :meth:`Service.handle` is the pure part: one dispatch in, one reply out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

from . import tracing, versions, wire
from .broker import Broker, Delivery, Outgoing, Refused, publish_or_fall_back
from .errors import ActionError, BrokerUnavailable, CloudBunchError, ConfigError, PublishFailed
from .settings import Settings, WorkerSettings
from .shutdown import forget_signals, stop_on_signals

if TYPE_CHECKING:
    from .metrics import WorkerMetrics

log = logging.getLogger(__name__)

KEEP: Final = wire.ABSENT
"""``state=KEEP``: leave the state field out of the reply, so the router keeps the saved state."""

HandlerFn = Callable[["Context"], Awaitable[None] | None]
F = TypeVar("F", bound=HandlerFn)

# How long a stopping worker lets running handlers finish (the process exits within 10 s).
DRAIN_SECONDS: Final = 7.0

TOO_NEW_REQUEUES: Final = 10
"""How often one worker hands back a dispatch whose state is newer than it knows before it
fails the turn with code ``state_too_new`` (a newer worker usually takes it long before)."""
TOO_NEW_PAUSE: Final = 0.5
"""Seconds a worker waits before handing such a dispatch back, so that it is no hot loop."""


class Context:
    """One turn as a handler sees it: the dispatch's fields and the actions to answer it."""

    __slots__ = ("_action", "_dispatch", "_output", "_reply_fields", "_service")

    def __init__(self, dispatch: wire.Dispatch, service: str) -> None:
        self._dispatch = dispatch
        self._service = service
        self._output: list[Any] = []
        self._action: str | None = None
        self._reply_fields: dict[str, Any] = {}

    # ------------------------------------------------------------------ the dispatch

    @property
    def session(self) -> str:
        return self._dispatch.session

    @property
    def turn(self) -> str:
        """This turn's id: the idempotency key for side effects (a turn may be re-dispatched)."""
        return self._dispatch.turn

    @property
    def attempt(self) -> int:
        return self._dispatch.attempt

    @property
    def depth(self) -> int:
        return self._dispatch.depth

    @property
    def event(self) -> str:
        """``start``, ``message``, ``result`` or ``idle``."""
        return self._dispatch.event

    @property
    def state(self) -> Any:
        return self._dispatch.state

    @property
    def args(self) -> Any:
        return self._dispatch.args

    @property
    def payload(self) -> Any:
        """``message``: the client's input; ``idle``: the seconds of silence that fired it."""
        return self._dispatch.payload

    @property
    def bubbled(self) -> bool:
        return self._dispatch.bubbled

    @property
    def result(self) -> wire.Result | None:
        return self._dispatch.result

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._dispatch.meta or {})

    @property
    def trace(self) -> dict[str, str]:
        """The W3C trace context (``traceparent``, ``tracestate``) of the client message
        whose chain this turn belongs to; empty when it carried none."""
        return dict(self._dispatch.trace or {})

    @property
    def service(self) -> str:
        """This service's name."""
        return self._service

    @property
    def action(self) -> str | None:
        """The action chosen so far (None: none yet)."""
        return self._action

    # ------------------------------------------------------------------ actions

    def say(self, *outputs: Any) -> None:
        """Add messages for the client; they are sent before the action's effects."""
        self._output.extend(outputs)

    def reply(self, *outputs: Any, state: Any = KEEP, idle: float | None = None) -> None:
        """Stay on top, optionally saving a new state (None clears it); the chain ends.

        ``idle=N``: if the person stays silent N seconds, this frame gets an ``idle`` event
        (see :meth:`Service.on_idle`); the timer lasts until this frame's next turn.
        """
        self._choose("reply", state=state, idle=_check_idle(idle))
        self._output.extend(outputs)

    def open(self, service: str, args: Any = None, *, state: Any = KEEP,
             idle: float | None = None) -> None:
        """Call a child service; its result comes back to this frame as a ``result`` event.

        ``idle=N`` sets this frame's idle timer while the child runs (a root's "end the
        order after 15 minutes of silence")."""
        self._check_name(service)
        self._choose("open", service=service, args=args, state=state, idle=_check_idle(idle))

    def close(self, result: Any = None) -> None:
        """End this frame, returning ``result`` to the parent."""
        self._choose("close", result=result)

    def replace(self, service: str, args: Any = None) -> None:
        """End this frame and start ``service`` in its place (its result goes to our parent)."""
        self._check_name(service)
        self._choose("replace", service=service, args=args)

    def pass_(self) -> None:
        """Not handled here: hand this message (or idle event) to the frame below."""
        if self.event not in ("message", "idle"):
            raise ActionError(f"pass_() is only allowed on message and idle events, not "
                              f"{self.event!r}")
        self._choose("pass")

    def fail(self, code: str, message: str = "") -> None:
        """End this frame with an error, like an exception propagating to the parent."""
        if not isinstance(code, str) or not code:
            raise ActionError("fail() needs a non-empty string code")
        self._choose("fail", error=wire.ErrorInfo(code, str(message)))

    def propagate(self) -> None:
        """Fail with the child's error, as an exception propagates: what happens to a failed
        result that no ``on_result`` handler takes. Only on a failed ``result`` event."""
        result = self.result
        if self.event != "result" or result is None or result.ok:
            raise ActionError("propagate() is only allowed on a failed result "
                              "(check ctx.result.ok first)")
        error = result.error or wire.ErrorInfo("error")
        self.fail(error.code or "error", error.message)

    def _choose(self, action: str, **fields: Any) -> None:
        if self._action is not None:
            raise ActionError(f"this turn already chose {self._action!r}; a handler takes "
                              f"exactly one action, so {action!r} is not allowed too")
        self._action = action
        self._reply_fields = fields

    @staticmethod
    def _check_name(service: Any) -> None:
        if not isinstance(service, str) or not service:
            raise ActionError(f"a service name must be a non-empty string, not {service!r}")

    def to_reply(self) -> wire.Reply:
        """The reply this context describes (``reply`` keeping the state if no action)."""
        action = self._action or "reply"
        fields = dict(self._reply_fields)
        fields.setdefault("state", KEEP)
        if action not in ("reply", "open"):
            fields["state"] = KEEP
        return wire.Reply(session=self.session, turn=self.turn, action=action,  # type: ignore[arg-type]
                          output=list(self._output), **fields)


def _check_idle(idle: Any) -> float | None:
    if idle is None or idle == 0:
        return None
    if (not isinstance(idle, (int, float)) or isinstance(idle, bool) or not idle > 0
            or idle > wire.MAX_IDLE or idle != idle):
        raise ActionError(f"idle must be a number of seconds above 0 and at most "
                          f"{wire.MAX_IDLE} (or 0/None for no timer), not {idle!r}")
    return idle


class Service:
    """A named service: handlers for ``start``, ``message``, ``result`` and ``idle`` events."""

    def __init__(self, name: str, *, state_version: int = 1) -> None:
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ConfigError(f"a service name must be a non-empty word, not {name!r}")
        if (not isinstance(state_version, int) or isinstance(state_version, bool)
                or state_version < 1):
            raise ConfigError(f"state_version must be an integer >= 1, not {state_version!r}")
        self.name = name
        self.state_version = state_version
        """The version of the state this code saves (see :mod:`worker_sdk.versions`)."""
        self._migrations: dict[int, versions.Migration] = {}
        self._too_new: dict[tuple[str, int], int] = {}
        self._on_start: HandlerFn | None = None
        self._on_message: HandlerFn | None = None
        self._on_result: dict[str | None, HandlerFn] = {}
        self._on_idle: HandlerFn | None = None

    def __repr__(self) -> str:
        return f"Service({self.name!r})"

    # ------------------------------------------------------------------ decorators

    def on_start(self, fn: F) -> F:
        """Handle ``start``: the frame was just opened (``ctx.args``, maybe ``ctx.payload``)."""
        self._on_start = fn
        return fn

    def on_message(self, fn: F) -> F:
        """Handle ``message``: the client's input in ``ctx.payload``."""
        self._on_message = fn
        return fn

    def on_idle(self, fn: F) -> F:
        """Handle ``idle``: the person was silent for ``ctx.payload`` seconds, as this frame
        asked with ``ctx.reply(..., idle=N)`` or ``ctx.open(..., idle=N)``.

        Without this handler an ``idle`` event is answered by keeping the state and setting
        no new timer."""
        self._on_idle = fn
        return fn

    def on_result(self, child: str | None = None) -> Callable[[F], F]:
        """Handle ``result`` of the child named ``child`` (any other child when omitted).

        The handler receives the child's failure too, not only its value: a child that
        failed, raised, timed out or is not served at all arrives with ``ctx.result.ok``
        False and ``ctx.result.error`` set (``ctx.result.value`` is then None). Check ``ok``
        first; ``ctx.propagate()`` hands the failure up as if there were no handler.
        """
        def register(fn: F) -> F:
            self._on_result[child] = fn
            return fn
        return register

    def migration(self, from_version: int) -> Callable[[versions.Migration],
                                                        versions.Migration]:
        """Register ``fn(state) -> state`` turning a state of ``from_version`` into the next.

        A frame saved by older code is migrated step by step before its handler sees it.
        """
        def register(fn: versions.Migration) -> versions.Migration:
            migrations = {**self._migrations, from_version: fn}
            try:
                versions.check_migrations(self.state_version, migrations)
            except ValueError as exc:
                raise ConfigError(f"service {self.name!r}: {exc}") from None
            self._migrations = migrations
            return fn
        return register

    # ------------------------------------------------------------------ the pure part

    async def handle(self, dispatch: wire.Dispatch) -> wire.Reply:
        """Run the matching handler (or the default) and build the reply; never raises.

        A state newer than this service's ``state_version`` fails the turn with code
        ``state_too_new`` (in memory there is no newer worker to hand it to).
        """
        try:
            return (await self._handle(dispatch))[0]
        except versions.StateTooNew as exc:
            return _too_new_reply(dispatch, exc)

    async def _handle(self, dispatch: wire.Dispatch,
                      metrics: WorkerMetrics | None = None) -> tuple[wire.Reply, bytes]:
        """The reply and its encoded body (encoding is where an unencodable state fails).

        Raises StateTooNew, before any handler runs, for a state saved by newer code. With
        ``metrics``, the time spent and the exception raised, if any, are recorded.
        """
        started = time.perf_counter()
        migrated = False
        if dispatch.state is not None:
            try:
                migrated, state = versions.upgrade(dispatch.state, self.state_version,
                                                   self._migrations)
            except versions.StateTooNew:
                raise
            except Exception as exc:
                if metrics is not None:
                    metrics.handled(self.name, dispatch.event, time.perf_counter() - started,
                                    exc)
                return _exception_reply(dispatch, self.name, exc, "state_migration")
            if state is not dispatch.state:  # unwrapped, or migrated
                dispatch = dataclasses.replace(dispatch, state=state)
        error: Exception | None = None
        ctx = Context(dispatch, self.name)
        handler = self._pick(dispatch)
        try:
            if handler is None:
                _default(ctx)
            else:
                outcome = handler(ctx)
                if inspect.isawaitable(outcome):
                    await outcome
            reply = ctx.to_reply()
            if self.state_version > 1:
                reply = self._versioned(reply, dispatch.state, migrated)
            body = wire.encode(reply.to_wire())
        except Exception as exc:
            error = exc
            reply, body = _exception_reply(dispatch, self.name, exc, "handler_exception")
        if metrics is not None:
            metrics.handled(self.name, dispatch.event, time.perf_counter() - started, error)
        return reply, body

    def _versioned(self, reply: wire.Reply, state: Any, migrated: bool) -> wire.Reply:
        """Stamp the saved state with this code's version (a migrated state is saved too)."""
        if reply.action not in ("reply", "open"):
            return reply
        if reply.state is wire.ABSENT:
            if not migrated:
                return reply
            new = state
        else:
            new = reply.state
        if new is None:
            return reply
        return dataclasses.replace(reply, state=versions.wrap(self.state_version, new))

    def _pick(self, dispatch: wire.Dispatch) -> HandlerFn | None:
        if dispatch.event == "start":
            return self._on_start
        if dispatch.event == "message":
            return self._on_message
        if dispatch.event == "idle":
            return self._on_idle
        child = dispatch.result.service if dispatch.result is not None else None
        if child is not None and child in self._on_result:
            return self._on_result[child]
        return self._on_result.get(None)

    # ------------------------------------------------------------------ the runtime

    def queue(self, namespace: str) -> str:
        """The queue this service consumes in ``namespace``."""
        return wire.service_queue(namespace, self.name)

    async def serve(self, broker: Broker, namespace: str, prefetch: int = 16, *,
                    metrics: WorkerMetrics | None = None) -> None:
        """Declare this service's queue and start consuming it. Replies go through the
        exchange ``NS.x.replies``, which the router declares."""
        replies = wire.exchange_names(namespace)["replies"]
        queue = self.queue(namespace)
        await broker.declare(queue)
        if metrics is not None:
            metrics.serving(self.name, prefetch)

        async def on_delivery(delivery: Delivery) -> None:
            if metrics is None:
                await self._answer(broker, replies, delivery, None)
                return
            metrics.deliveries.labels(self.name).inc()
            metrics.took(self.name, wire.sent_ms(delivery.headers), delivery.redelivered)
            in_progress = metrics.in_progress.labels(self.name)
            in_progress.inc()
            try:
                await self._answer(broker, replies, delivery, metrics)
            finally:
                in_progress.dec()

        await broker.consume(queue, on_delivery, prefetch=prefetch)
        log.info("event=service_serving service=%s queue=%s prefetch=%d", self.name, queue,
                 prefetch)

    async def _answer(self, broker: Broker, replies: str, delivery: Delivery,
                      metrics: WorkerMetrics | None) -> None:
        try:
            dispatch = wire.Dispatch.from_wire(wire.decode(delivery.body))
            trace = wire.trace_context(delivery.headers)
            if trace is not None:
                dispatch = dataclasses.replace(dispatch, trace=trace)
        except wire.BadBody as exc:
            if metrics is not None:
                metrics.bad_dispatches.labels(self.name).inc()
            # Not ours to fix: the router only sends valid dispatches, so this is noise.
            log.warning("event=bad_dispatch service=%s message_id=%s reason=%s detail=%s",
                        self.name, delivery.message_id, exc.reason, exc.detail)
            await delivery.ack()
            return
        # The handler's span: a consumer of the dispatch, child of the dispatch's span.
        with tracing.start_span(
                f"process {self.name}", "consumer", delivery.headers,
                tracing.messaging("process", self.name, message_id=delivery.message_id,
                                  session=dispatch.session, turn=dispatch.turn,
                                  depth=dispatch.depth, service=self.name)):
            await self._answer_dispatch(broker, replies, delivery, dispatch, metrics)

    async def _answer_dispatch(self, broker: Broker, replies: str, delivery: Delivery,
                               dispatch: wire.Dispatch, metrics: WorkerMetrics | None) -> None:
        try:
            reply, body = await self._handle(dispatch, metrics)
        except versions.StateTooNew as exc:
            if not await self._hand_back_too_new(dispatch, delivery, exc):
                return
            reply = _too_new_reply(dispatch, exc)
            body = wire.encode(reply.to_wire())
        # The dispatch's trace context goes on with the reply (PROTOCOL.md, "Transport"):
        # when this worker traces, as the context of the reply's own span.
        reply_id = f"{dispatch.turn}.{dispatch.attempt}.r"
        # A partitioned namespace names the reply's partition in the dispatch's reply_to.
        key = wire.reply_key(delivery.reply_to)
        try:
            with tracing.start_span(
                    f"send {replies}", "producer", None,
                    tracing.messaging("send", replies, message_id=reply_id,
                                      routing_key=key, session=dispatch.session,
                                      turn=dispatch.turn, depth=dispatch.depth,
                                      service=self.name, action=reply.action)) as span:
                # A partition that is gone (the routers run with fewer): the shared queue.
                routed = await publish_or_fall_back(
                    broker, Outgoing(key, body, reply_id,
                                     tracing.inject(dispatch.trace or {}, span),
                                     exchange=replies), wire.REPLIES_KEY)
        except PublishFailed as exc:
            if metrics is not None:
                metrics.reply_failures.labels(self.name).inc()
            log.warning("event=reply_publish_failed session=%s turn=%s service=%s reason=%s",
                        dispatch.session, dispatch.turn, self.name, exc)
            await delivery.reject(requeue=True)
            return
        if isinstance(routed, Refused):
            # What the reply carries cannot be sent (a forged dispatch's turn id too long
            # for a message id, say): retrying would loop, so the dispatch is dropped.
            log.error("event=reply_refused session=%s turn=%s service=%s reason=%s",
                      dispatch.session[:80], dispatch.turn[:80], self.name, routed.reason)
            await delivery.ack()
            return
        if not routed:
            if metrics is not None:
                metrics.reply_failures.labels(self.name).inc()
            log.error("event=replies_unroutable session=%s turn=%s service=%s exchange=%s "
                      "(no router has declared it and its queue)", dispatch.session,
                      dispatch.turn, self.name, replies)
            # Wait a little before handing it back, so a missing queue is not a hot loop.
            await asyncio.sleep(1.0)
            await delivery.reject(requeue=True)
            return
        await delivery.ack()
        if metrics is not None:
            metrics.replies.labels(self.name, reply.action).inc()
        log.debug("event=turn_answered session=%s turn=%s service=%s event_type=%s attempt=%d "
                 "action=%s", dispatch.session, dispatch.turn, self.name, dispatch.event,
                 dispatch.attempt, reply.action)

    async def _hand_back_too_new(self, dispatch: wire.Dispatch, delivery: Delivery,
                                 exc: versions.StateTooNew) -> bool:
        """Requeue a dispatch for a newer worker; True once this worker gave up on it."""
        key = (dispatch.turn, dispatch.attempt)
        seen = self._too_new.get(key, 0) + 1
        if seen > TOO_NEW_REQUEUES:
            self._too_new.pop(key, None)
            log.error("event=state_too_new_failed session=%s turn=%s service=%s found=%d "
                      "known=%d", dispatch.session, dispatch.turn, self.name, exc.found,
                      exc.known)
            return True
        if len(self._too_new) > 10_000:  # forget the oldest: a bound, not a cache
            self._too_new.pop(next(iter(self._too_new)))
        self._too_new[key] = seen
        log.warning("event=state_too_new session=%s turn=%s service=%s found=%d known=%d "
                    "handed_back=%d", dispatch.session, dispatch.turn, self.name, exc.found,
                    exc.known, seen)
        await asyncio.sleep(TOO_NEW_PAUSE)
        await delivery.reject(requeue=True)
        return False

    def run(self, settings: Settings | None = None, prefetch: int | None = None) -> None:
        """Serve until SIGTERM/SIGINT (exit 0) or until the broker is lost for good (exit 1).

        Reads the ``CLOUDBUNCH_*`` variables of :class:`~worker_sdk.settings.WorkerSettings`
        when ``settings`` is None."""
        sys.exit(run_main([self], settings, prefetch))


def _exception_reply(dispatch: wire.Dispatch, service: str, exc: Exception,
                     event: str) -> tuple[wire.Reply, bytes]:
    log.exception("event=%s session=%s turn=%s service=%s", event, dispatch.session,
                  dispatch.turn, service)
    text = " ".join(str(exc).split())
    reply = wire.Reply(session=dispatch.session, turn=dispatch.turn, action="fail",
                       error=wire.ErrorInfo("exception", f"{type(exc).__name__}: {text}"))
    return reply, wire.encode(reply.to_wire())


def _too_new_reply(dispatch: wire.Dispatch, exc: versions.StateTooNew) -> wire.Reply:
    return wire.Reply(session=dispatch.session, turn=dispatch.turn, action="fail",
                      error=wire.ErrorInfo("state_too_new", str(exc)))


def _default(ctx: Context) -> None:
    """What a service without a matching handler answers."""
    if ctx.event == "message":
        ctx.pass_()
    elif ctx.event == "result" and ctx.result is not None and not ctx.result.ok:
        ctx.propagate()
    # start, idle, or a successful result: reply, keeping the state and setting no timer
    # (the Context default).


async def run_services(services: Sequence[Service], broker: Broker, namespace: str,
                       prefetch: int, stop: asyncio.Event, *,
                       metrics: WorkerMetrics | None = None,
                       serving: asyncio.Event | None = None) -> None:
    """Serve ``services`` on a connected ``broker`` until ``stop`` is set or the broker is lost.

    On stop, consumers are cancelled and running handlers get a few seconds to finish.
    Raises BrokerUnavailable when the broker was lost for good. Does not close ``broker``.
    ``serving`` is set while every service consumes (readiness).
    """
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ConfigError(f"a service is named twice: {', '.join(names)}")
    for service in services:
        await service.serve(broker, namespace, prefetch, metrics=metrics)
    if serving is not None:
        serving.set()
    waits: set[asyncio.Task[Any]] = {asyncio.create_task(stop.wait(), name="stop")}
    lost_task = asyncio.create_task(broker.wait_lost(), name="wait_lost")
    waits.add(lost_task)
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if serving is not None:
            serving.clear()
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        # Stop all consumers at once so they share one drain period.
        await asyncio.gather(*(broker.cancel(s.queue(namespace), drain=DRAIN_SECONDS)
                               for s in services), return_exceptions=True)
    if lost_task.done() and not lost_task.cancelled():
        raise BrokerUnavailable("the RabbitMQ connection was lost and could not be restored; "
                                "exiting so that a supervisor restarts this worker")
    log.info("event=services_stopped services=%s", ",".join(names))


def run_main(services: Sequence[Service], settings: Settings | None = None,
             prefetch: int | None = None, *, connect_timeout: float | None = None,
             metrics_port: int | None = None, configure_logging: bool = True) -> int:
    """Blocking entry point for workers; returns the process exit code.

    Reads ``WorkerSettings.from_env()`` when ``settings`` is None; ``prefetch``, when given,
    overrides the settings' own. Expected failures (broker not reachable, bad setting) print
    one line, ``cloudbunch worker: ...``, to stderr and return 1. With ``metrics_port``
    (else ``CLOUDBUNCH_METRICS_PORT``), serves /metrics, /healthz and /readyz on it.
    """
    if configure_logging:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = settings or WorkerSettings.from_env()
        if metrics_port is None:
            from .exposition import metrics_port as read_port

            metrics_port = read_port(os.environ.get("CLOUDBUNCH_METRICS_PORT"))
        return run_event_loop(serve_main(services, settings, prefetch=prefetch,
                                         connect_timeout=connect_timeout,
                                         metrics_port=metrics_port))
    except CloudBunchError as exc:
        print(f"cloudbunch worker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


async def serve_main(services: Sequence[Service], settings: Settings, *,
                     prefetch: int | None = None, connect_timeout: float | None = None,
                     metrics_port: int | None = None) -> int:
    """Connect to RabbitMQ and serve ``services`` until SIGTERM/SIGINT; return 0. With
    ``metrics_port``, serve /metrics, /healthz and /readyz on it.

    Raises BrokerUnavailable when the broker cannot be reached or is lost for good.
    """
    from .amqp import AmqpBroker  # the runtime needs aio-pika; the pure part does not

    if prefetch is None:
        prefetch = (settings if isinstance(settings, WorkerSettings) else WorkerSettings()
                    ).prefetch
    names = "+".join(s.name for s in services)
    timeout = {} if connect_timeout is None else {"connect_timeout": connect_timeout}
    broker = AmqpBroker(settings.amqp_url, settings.queue_type, name=f"cloudbunch-worker {names}",
                        **timeout)
    stop = stop_on_signals()
    serving = asyncio.Event()
    metrics = server = None
    try:
        if metrics_port is not None:
            metrics, server = await start_worker_probes(metrics_port, broker, serving)
        await broker.connect()
        await run_services(services, broker, settings.namespace, prefetch, stop,
                           metrics=metrics, serving=serving)
    finally:
        forget_signals()
        if server is not None:
            await server.close()
        await broker.close()
    return 0


async def start_worker_probes(port: int, broker: Broker, serving: asyncio.Event,
                              ) -> tuple[WorkerMetrics, Any]:
    """The worker's metrics and its /metrics, /healthz, /readyz server, started."""
    from .exposition import ProbeServer
    from .metrics import WorkerMetrics

    metrics = WorkerMetrics()
    metrics.up.set_function(lambda: 1.0 if broker.is_connected() else 0.0)

    def ready() -> str | None:
        if not broker.is_connected():
            return "not connected to RabbitMQ"
        if not serving.is_set():
            return "not consuming"
        return None

    server = ProbeServer(port, metrics.registry, ready)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on port {port}: {exc.strerror or exc}; "
                          "choose another --metrics-port / CLOUDBUNCH_METRICS_PORT") from None
    return metrics, server


def run_event_loop(coro: Any) -> int:
    """asyncio.run, on uvloop when it is installed (the ``fast`` extra)."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[no-any-return]
    return uvloop.run(coro)  # type: ignore[no-any-return]


def load_service(spec: str) -> Service:
    """Import ``module:attr`` and return the Service it names; ConfigError if it cannot."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{spec!r} is not MODULE:ATTRIBUTE (for example router.demo_flow:menu)")
    # Like other app loaders, find modules in the working directory even when started
    # through a console script (whose sys.path[0] is the script's folder).
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"cannot import module {module_name!r} for {spec!r}: no such "
                              "module (is it on PYTHONPATH?)") from None
        raise
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r} "
                              f"(for {spec!r})") from None
    if not isinstance(target, Service):
        raise ConfigError(f"{spec!r} is a {type(target).__name__}, not a worker_sdk.Service")
    return target

