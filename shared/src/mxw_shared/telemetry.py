"""Tracing: one trace per job, across HTTP, the database and Kafka.

The OpenTelemetry SDK is configured by the standard OTEL_* environment variables:

- OTEL_SDK_DISABLED=true turns tracing off (no spans, no trace ids in logs).
- OTEL_TRACES_EXPORTER (otlp | console | none) picks the exporter. Unset, spans are exported
  over OTLP/HTTP only when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is
  set; otherwise they are made (for trace ids in logs and in Kafka headers) but not exported.
- OTEL_TRACES_SAMPLER_ARG (0..1, default 1) samples that share of new traces; a stage always
  follows the decision carried in the event's traceparent (parent-based).
- OTEL_SERVICE_NAME overrides the service name of the resource.

Credentials never leave in a span: the query parameters with secret-looking names (a feed's
`?access_token=`) and any JWT are blanked in the URL attributes of every span (redaction.py),
when the span starts and again after the HTTP server span got its request attributes.

The W3C `traceparent` of the span that writes an outbox row is stored with the row's headers,
so the relay (maybe later, maybe another process) publishes it under that trace, and the
consumer of the event parents its stage span on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Literal

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from mxw_shared.redaction import scrub_secrets

SERVICE_ATTR = "mxw.service"
TRACE_HEADERS = ("traceparent", "tracestate")
# Health probes and scrapes would otherwise be a trace each, every few seconds.
EXCLUDED_URLS = "livez,readyz,metrics"

# Span attributes that carry a URL, a request target or a query string (old and new HTTP
# semantic conventions).
URL_ATTRIBUTES = ("http.url", "http.target", "url.full", "url.query")

_tracer_name = "mxw"
_setup_done = False
_kafka_instrumented = False


class _DropParentlessNoise(Sampler):
    """Root sampler that drops spans nobody asked for: a database query or Kafka poll with no
    request or event above it (the outbox relay's polling, consumer fetch loops)."""

    def __init__(self, delegate: Sampler) -> None:
        self._delegate = delegate

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if kind == SpanKind.CLIENT or (kind == SpanKind.CONSUMER and name.endswith(" receive")):
            return SamplingResult(Decision.DROP)
        return self._delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"DropParentlessNoise{{{self._delegate.get_description()}}}"


class _InheritService(SpanProcessor):
    """Stamps each span with the service that made it (its parent's, when in-process), so
    spans stay attributable when several services share one process (tests, local stack)."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        if span.attributes and SERVICE_ATTR in span.attributes:
            return
        parent = trace.get_current_span(parent_context)
        attributes = getattr(parent, "attributes", None)
        if attributes and SERVICE_ATTR in attributes:
            span.set_attribute(SERVICE_ATTR, attributes[SERVICE_ATTR])

    def on_end(self, span: ReadableSpan) -> None:
        return None


def redact_span(span: trace.Span) -> None:
    """Blank query credentials and JWTs in the URL attributes of a recording span."""
    attributes = getattr(span, "attributes", None)
    if not attributes or not span.is_recording():
        return
    for name in URL_ATTRIBUTES:
        value = attributes.get(name)
        if isinstance(value, str):
            clean = scrub_secrets(value)
            if clean != value:
                span.set_attribute(name, clean)


class _RedactCredentials(SpanProcessor):
    """Every span of every instrumentation (HTTP server and client, ...) starts without
    credentials in its URL attributes."""

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        redact_span(span)

    def on_end(self, span: ReadableSpan) -> None:
        return None


def _enabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"


def _exporter() -> SpanExporter | None:
    choice = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if choice == "console":
        return ConsoleSpanExporter()
    if choice == "otlp" or (not choice and endpoint):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()  # endpoint, headers, timeout: from OTEL_EXPORTER_OTLP_*
    return None


def _sampler() -> Sampler:
    try:
        ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))
    except ValueError:
        ratio = 1.0
    return ParentBased(_DropParentlessNoise(TraceIdRatioBased(min(max(ratio, 0.0), 1.0))))


def setup_tracing(service_name: str) -> bool:
    """Install the tracer provider and the asyncpg, httpx and aiokafka instrumentations once
    per process (idempotent). Returns whether tracing is on."""
    global _setup_done, _kafka_instrumented
    if not _enabled():
        return False
    if _setup_done:
        return True
    _setup_done = True
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        name = os.environ.get("OTEL_SERVICE_NAME") or service_name
        provider = TracerProvider(
            resource=Resource.create({"service.name": name}), sampler=_sampler()
        )
        provider.add_span_processor(_InheritService())
        provider.add_span_processor(_RedactCredentials())
        exporter = _exporter()
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    else:
        provider = trace.get_tracer_provider()  # type: ignore[assignment]
        provider.add_span_processor(_InheritService())
        provider.add_span_processor(_RedactCredentials())

    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
    HTTPXClientInstrumentor().instrument()
    AIOKafkaInstrumentor().instrument()
    _kafka_instrumented = True
    return True


def instrument_app(
    app: Any, service_name: str, exclude_spans: list[Literal["receive", "send"]] | None = None
) -> None:
    """Server spans for every request of a FastAPI app (probes and scrapes excepted);
    `exclude_spans` ("send", "receive") drops the spans of each ASGI message."""
    if not setup_tracing(service_name):
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    def stamp(span: trace.Span, scope: dict[str, Any]) -> None:
        if span.is_recording():
            span.set_attribute(SERVICE_ATTR, service_name)
            # The ASGI middleware sets the request's attributes again after the span
            # started (past _RedactCredentials), then calls this hook.
            redact_span(span)

    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls=EXCLUDED_URLS,
        server_request_hook=stamp,
        exclude_spans=exclude_spans,
    )


def tracer() -> trace.Tracer:
    return trace.get_tracer(_tracer_name)


def current_traceparent() -> str | None:
    """W3C traceparent of the active span, or None when there is none (tracing off)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


@contextlib.contextmanager
def consume_span(
    topic: str, headers: Mapping[str, str], service: str, group: str | None = None
) -> Iterator[trace.Span]:
    """The span of handling one event, a child of the span that published it."""
    parent = propagate.extract(dict(headers))
    attributes: dict[str, str] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        SERVICE_ATTR: service,
    }
    if group:
        attributes["messaging.consumer.group.name"] = group
    if headers.get("ce_id"):
        attributes["messaging.message.id"] = headers["ce_id"]
    with tracer().start_as_current_span(
        f"{topic} process", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ) as span:
        yield span


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[trace.Span]:
    """An internal span (model inference, a batch of work) under the current one."""
    with tracer().start_as_current_span(name, attributes=attributes) as current:
        yield current


@contextlib.contextmanager
def publish_context(headers: MutableMapping[str, str]) -> Iterator[list[tuple[str, bytes]]]:
    """Kafka headers for publishing an outbox row under the trace stored with it. With the
    aiokafka instrumentation on, its send span (a child of the stored context) injects the
    traceparent; without it, the stored one is sent as is."""
    stored = {k: headers[k] for k in TRACE_HEADERS if k in headers}
    if not stored or not _kafka_instrumented:
        yield [(k, str(v).encode()) for k, v in headers.items()]
        return
    token = otel_context.attach(propagate.extract(stored))
    try:
        yield [(k, str(v).encode()) for k, v in headers.items() if k not in TRACE_HEADERS]
    finally:
        otel_context.detach(token)


def add_trace_ids(_: object, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: the active trace and span ids on every log line."""
    current = trace.get_current_span()
    ctx = current.get_span_context()
    if ctx.is_valid:
        event_dict.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event_dict.setdefault("span_id", format(ctx.span_id, "016x"))
        # Several services in one process (tests, a dev shell): the span knows whose line it is.
        attributes = getattr(current, "attributes", None)
        if "service" not in event_dict and attributes and SERVICE_ATTR in attributes:
            event_dict["service"] = attributes[SERVICE_ATTR]
    return event_dict
