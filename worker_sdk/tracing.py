"""OpenTelemetry traces: on when the ``otel`` extra is installed and ``OTEL_TRACES_EXPORTER``
asks for an exporter; otherwise every function here is a no-op that imports nothing.

Configured only by the standard variables: ``OTEL_TRACES_EXPORTER`` (``console``: one JSON
object a line on stdout; ``otlp``: OTLP over HTTP (protobuf), or gRPC with
``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` and ``opentelemetry-exporter-otlp-proto-grpc``; ``none``
or unset: off), ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (the resource), and those the
OTLP exporter and the batch processor read themselves (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_BSP_*``...). Context crosses processes in the AMQP headers ``traceparent`` and
``tracestate`` (W3C trace context, PROTOCOL.md "Transport").

Span attributes follow the OpenTelemetry messaging conventions for RabbitMQ
(:func:`messaging`) plus ``cloudbunch.session``, ``cloudbunch.turn``, ``cloudbunch.depth``,
``cloudbunch.service``, ``cloudbunch.action``.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal

log = logging.getLogger(__name__)

Kind = Literal["producer", "consumer", "internal"]

_tracer: Any = None
_checked = False


def enabled() -> bool:
    """Whether spans are recorded in this process (decided once, at the first call)."""
    global _checked, _tracer
    if not _checked:
        _checked = True
        _tracer = _setup()
    return _tracer is not None


def _setup() -> Any:
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    if not names or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        log.warning("event=tracing_off reason=\"OTEL_TRACES_EXPORTER is set but OpenTelemetry "
                    "is not installed: pip install 'cloudbunch[otel]'\"")
        return None
    provider = TracerProvider(resource=Resource.create())
    added = 0
    for name in names:
        processor = _processor(name)
        if processor is not None:
            provider.add_span_processor(processor)
            added += 1
    if not added:
        return None
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)  # so handlers' own spans join the trace
    log.info("event=tracing_on exporters=%s", ",".join(names))
    return provider.get_tracer("cloudbunch")


def _processor(name: str) -> Any:
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )
    if name == "console":
        # One span a line (the default is indented JSON): greppable, and parseable in tests.
        return SimpleSpanProcessor(ConsoleSpanExporter(
            formatter=lambda span: span.to_json(indent=None) + "\n"))
    if name == "otlp":
        # http/protobuf is the OTLP default (and what the otel extra installs); grpc needs
        # opentelemetry-exporter-otlp-proto-grpc.
        protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
        try:
            if protocol == "grpc":
                package = "opentelemetry-exporter-otlp-proto-grpc"
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
            elif protocol == "http/protobuf":
                package = "'cloudbunch[otel]'"
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )
            else:
                log.warning("event=tracing_exporter_unknown exporter=otlp protocol=%s "
                            "reason=\"OTEL_EXPORTER_OTLP_PROTOCOL takes http/protobuf or "
                            "grpc\"", protocol)
                return None
        except ImportError:
            log.warning("event=tracing_exporter_missing exporter=otlp protocol=%s "
                        "reason=\"pip install %s to export spans by OTLP\"", protocol, package)
            return None
        return BatchSpanProcessor(OTLPSpanExporter())
    log.warning("event=tracing_exporter_unknown exporter=%s reason=\"OTEL_TRACES_EXPORTER "
                "takes console, otlp or none\"", name)
    return None


_NO_SPAN: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
"""What :func:`start_span` returns when tracing is off: one shared, stateless context."""


def start_span(name: str, kind: Kind, headers: Mapping[str, Any] | None = None,
               attributes: Mapping[str, Any] | None = None, *,
               current: bool = True) -> contextlib.AbstractContextManager[Any]:
    """A span for the ``with`` block (None when tracing is off).

    Its parent is the context in ``headers`` (AMQP headers carrying ``traceparent``) when
    given, else the current span. ``current=False`` leaves the current span as it is (for
    sibling spans open at once, such as the publishes of one step).
    """
    if not enabled():
        return _NO_SPAN  # no generator per message when nothing is traced
    return _span(name, kind, headers, attributes, current)


@contextlib.contextmanager
def _span(name: str, kind: Kind, headers: Mapping[str, Any] | None,
          attributes: Mapping[str, Any] | None, current: bool) -> Iterator[Any]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = None
    if headers is not None:
        parent = TraceContextTextMapPropagator().extract(_text(headers))
    span_kind = {"producer": trace.SpanKind.PRODUCER, "consumer": trace.SpanKind.CONSUMER,
                 "internal": trace.SpanKind.INTERNAL}[kind]
    attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
    if current:
        with _tracer.start_as_current_span(name, context=parent, kind=span_kind,
                                           attributes=attrs) as span:
            yield span
    else:
        span = _tracer.start_span(name, context=parent, kind=span_kind, attributes=attrs)
        try:
            yield span
        finally:
            span.end()


class DeferredSpan:
    """A step's span whose parent is known only once the step publishes: a deadline's step
    (the scanner's) has no message to take a context from, only the chain's trace headers
    that its dispatches and notices carry. Started by the first publish (:func:`parent`)
    with the time the step began; a step that publishes nothing records no span."""

    def __init__(self, name: str, attributes: Mapping[str, Any]) -> None:
        self.name = name
        self.attributes = {k: v for k, v in attributes.items() if v is not None}
        self.start_ns = time.time_ns()
        self.span: Any = None

    def headers(self, chain: Mapping[str, Any]) -> dict[str, str]:
        """Trace headers naming this span as parent; starts it, as a child of the context
        in ``chain`` (the chain's headers), on the first call."""
        if self.span is None:
            from opentelemetry.trace import SpanKind
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            self.span = _tracer.start_span(
                self.name, context=TraceContextTextMapPropagator().extract(_text(chain)),
                kind=SpanKind.INTERNAL, attributes=self.attributes, start_time=self.start_ns)
        return inject({}, self.span)

    def update(self, name: str | None = None, **attributes: Any) -> None:
        """Rename the span and add attributes, now that the step's outcome is known."""
        if name is not None:
            self.name = name
        self.attributes.update({k: v for k, v in attributes.items() if v is not None})
        if self.span is not None:
            if name is not None:
                self.span.update_name(name)
            self.span.set_attributes(self.attributes)


_deferred: contextvars.ContextVar[DeferredSpan | None] = contextvars.ContextVar(
    "cloudbunch_deferred_span", default=None)


@contextlib.contextmanager
def deferred_span(name: str, attributes: Mapping[str, Any] | None = None
                  ) -> Iterator[DeferredSpan | None]:
    """A :class:`DeferredSpan` for the ``with`` block (None when tracing is off): the
    publishes made in it (in this task) are its children; it ends with the block."""
    if not enabled():
        yield None
        return
    deferred = DeferredSpan(name, attributes or {})
    token = _deferred.set(deferred)
    try:
        yield deferred
    except BaseException as exc:
        if deferred.span is not None:
            from opentelemetry.trace import Status, StatusCode

            deferred.span.record_exception(exc)
            deferred.span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        _deferred.reset(token)
        if deferred.span is not None:
            deferred.span.end()


def parent(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Where a publish's span takes its parent from (for :func:`start_span`): the current
    span (None), else the pending :func:`deferred_span`, else the chain's ``headers``."""
    if in_span():
        return None
    deferred = _deferred.get()
    if deferred is not None:
        return deferred.headers(headers)
    return headers


def in_span() -> bool:
    """Whether a span is current (always False when tracing is off)."""
    if not enabled():
        return False
    from opentelemetry import trace

    return bool(trace.get_current_span().get_span_context().is_valid)


def inject(headers: Mapping[str, str], span: Any = None) -> dict[str, str]:
    """``headers`` with ``traceparent``/``tracestate`` of ``span`` (or of the current span);
    unchanged when tracing is off or there is no span."""
    out = dict(headers)
    if not enabled():
        return out
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = trace.set_span_in_context(span) if span is not None else None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=context)
    if carrier.get("traceparent"):
        out.pop("tracestate", None)
        out.update(carrier)
    return out


def messaging(operation: Literal["send", "process"], destination: str, *,
              message_id: str | None = None, routing_key: str | None = None,
              session: str | None = None, turn: str | None = None, depth: int | None = None,
              service: str | None = None, action: str | None = None) -> dict[str, Any]:
    """Span attributes of one message (the messaging conventions for RabbitMQ, and ours)."""
    return {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": operation,
        "messaging.destination.name": destination,
        "messaging.message.id": message_id,
        "messaging.rabbitmq.destination.routing_key": routing_key or destination,
        "cloudbunch.session": session,
        "cloudbunch.turn": turn,
        "cloudbunch.depth": depth,
        "cloudbunch.service": service,
        "cloudbunch.action": action,
    }


def _text(headers: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for name in ("traceparent", "tracestate"):
        value = headers.get(name)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            out[name] = value
    return out


def reset() -> None:
    """Forget the decision of :func:`enabled` (tests)."""
    global _checked, _tracer
    _checked, _tracer = False, None
