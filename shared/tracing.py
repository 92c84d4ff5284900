"""OpenTelemetry for every process: SDK setup (called only at entry points), W3C context in
Kafka headers, and `"send {topic}"` / `"process {topic}"` spans with the current messaging
semantic-convention attributes (messaging.operation.type send|process,
messaging.destination.name, server.address/server.port of the Kafka bootstrap).

The standard variables are honoured: OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT, _PROTOCOL
(grpc or http/protobuf), _HEADERS, _INSECURE, _CERTIFICATE; OTEL_TRACES_EXPORTER /
OTEL_METRICS_EXPORTER=none; OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (read by the SDK).
Histograms in seconds get sub-second buckets.

A telemetry failure never breaks processing: propagation errors are logged and ignored, and
exporters run in background processors.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)

from shared.events import HeaderList

log = logging.getLogger(__name__)

MAX_LINKS = 128


# seconds: 1 ms .. 60 s (the SDK's default buckets start at 5, useless for latencies)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
_server: dict[str, Any] = {}


def setup_telemetry(
    service_name: str,
    *,
    span_exporter: SpanExporter | None = None,
    metrics_port: int | None = None,
) -> TracerProvider:
    """Install the global tracer and meter providers; call once, from a process entry point.

    Spans go to `span_exporter` when given, else to OTLP when an OTLP endpoint is configured;
    metrics go to OTLP likewise and to a Prometheus endpoint when `metrics_port` is set.
    """
    resource = Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
         "service.namespace": "lepton"}
    )
    # sampler from OTEL_TRACES_SAMPLER[_ARG]; PrimedIds lets shared.record_trace decide a
    # root span's sampling before asking the SDK for it
    provider = TracerProvider(resource=resource, id_generator=PrimedIds())
    if span_exporter is None and _otlp_wanted("TRACES"):
        span_exporter = _otlp_exporter("TRACES")
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _setup_metrics(resource, _otlp_wanted("METRICS"), metrics_port)
    return provider


class PrimedIds(RandomIdGenerator):
    """The SDK's random ids, except that the calling thread may set the next trace id first
    (`prime`), so that a sampling decision made ahead of `start_span` is the span's own."""

    def __init__(self) -> None:
        self._next = threading.local()

    def prime(self, trace_id: int) -> None:
        """Make `trace_id` this thread's next generated trace id."""
        self._next.trace_id = trace_id

    def generate_trace_id(self) -> int:
        """The primed trace id, once; otherwise a random one."""
        primed: int | None = getattr(self._next, "trace_id", None)
        if primed is None:
            return super().generate_trace_id()
        self._next.trace_id = None
        return primed


def _otlp_wanted(signal: str) -> bool:
    if os.environ.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


def otlp_protocol(signal: str) -> str:
    """`grpc` or `http/protobuf`, from OTEL_EXPORTER_OTLP_{signal}_PROTOCOL or _PROTOCOL."""
    return (os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()


def _otlp_exporter(signal: str) -> Any:
    """The OTLP exporter for `signal` (TRACES or METRICS); each reads its own env variables."""
    http = otlp_protocol(signal).startswith("http")
    if signal == "TRACES":
        if http:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpSpanExporter,
            )

            return HttpSpanExporter()
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if http:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter()
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


def _setup_metrics(resource: Resource, otlp: bool, metrics_port: int | None) -> None:
    from opentelemetry.sdk.metrics import Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    readers: list[MetricReader] = []
    if otlp:
        readers.append(PeriodicExportingMetricReader(_otlp_exporter("METRICS")))
    if metrics_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="0.0.0.0")  # noqa: S104
        readers.append(PrometheusMetricReader())
    seconds = View(instrument_type=Histogram, instrument_unit="s",
                   aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS))
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers,
                                             views=[seconds]))


def note_kafka_server(bootstrap: str) -> None:
    """Remember the first bootstrap server for spans' server.address/server.port."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    if host and port.isdigit():
        _server.update({"server.address": host, "server.port": int(port)})


def shutdown_telemetry() -> None:
    """Flush and stop the global providers (safe to call when none were installed)."""
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception:  # telemetry must never break shutdown
                log.debug("telemetry shutdown failed", exc_info=True)


def get_tracer(name: str) -> trace.Tracer:
    """A tracer from the global provider (a no-op one until setup_telemetry runs)."""
    return trace.get_tracer(name)


class _HeaderGetter:
    def get(self, carrier: dict[str, bytes], key: str) -> list[str] | None:
        value = carrier.get(key)
        return None if value is None else [value.decode("ascii", "replace")]

    def keys(self, carrier: dict[str, bytes]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def inject_headers(headers: HeaderList, ctx: otel_context.Context | None = None) -> HeaderList:
    """Append W3C trace headers for `ctx` (default: current) to `headers`; returns `headers`."""
    try:
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=ctx)
        headers.extend((k, v.encode("ascii")) for k, v in carrier.items())
    except Exception:
        log.debug("trace context injection failed", exc_info=True)
    return headers


def extract_context(
    headers: Sequence[tuple[str, bytes | str | None]] | dict[str, bytes] | None,
) -> otel_context.Context:
    """The trace context carried in Kafka headers (an empty context when absent or bad)."""
    try:
        if isinstance(headers, dict):
            carrier = headers
        else:
            carrier = {
                k: (v.encode() if isinstance(v, str) else v)
                for k, v in (headers or ())
                if v is not None
            }
        return propagate.extract(carrier, getter=_GETTER)  # type: ignore[arg-type]
    except Exception:
        log.debug("trace context extraction failed", exc_info=True)
        return otel_context.Context()


def span_name(operation: str, topic: str) -> str:
    """The semantic-convention span name: `"{operation} {destination}"`."""
    return f"{operation} {topic}"


def messaging_attributes(topic: str, operation: str, **extra: Any) -> dict[str, Any]:
    """Kafka messaging attributes for a `send` or `process` span on `topic`."""
    attrs: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        **_server,
    }
    for key, value in extra.items():
        if value is not None:
            attrs[key] = value
    return attrs


@contextmanager
def publish_span(
    tracer: trace.Tracer,
    topic: str,
    headers: HeaderList,
    *,
    key: str | None = None,
    parent: otel_context.Context | None = None,
    attributes: dict[str, Any] | None = None,
) -> Iterator[Span]:
    """A PRODUCER span `"send {topic}"`; its context is injected into `headers`."""
    attrs = messaging_attributes(topic, "send", **{"messaging.kafka.message.key": key})
    attrs.update(attributes or {})
    with tracer.start_as_current_span(
        span_name("send", topic), context=parent, kind=SpanKind.PRODUCER, attributes=attrs
    ) as span:
        inject_headers(headers)
        yield span


def parent_decides(tracer: trace.Tracer) -> bool:
    """Whether `tracer`'s sampler (or the global provider's, for a proxy tracer) drops every
    child of an unsampled remote parent, as the SDK's default `parentbased_*` samplers do; a
    process without the SDK records nothing anyway."""
    sampler = getattr(tracer, "sampler", None) or getattr(
        trace.get_tracer_provider(), "sampler", None)
    if sampler is None:
        return True
    cached = _SAMPLER_CACHE.get(id(sampler))
    if cached is None:
        cached = "remoteParentNotSampled:AlwaysOffSampler" in sampler.get_description()
        _SAMPLER_CACHE.clear()
        _SAMPLER_CACHE[id(sampler)] = cached
    return cached


def unsampled_parent(
    tracer: trace.Tracer,
    headers: Sequence[tuple[str, bytes | str | None]] | dict[str, bytes] | None,
) -> SpanContext | None:
    """The remote parent in `headers` when it is valid, not sampled, and the sampler follows
    it; None when the SDK must decide."""
    if headers is None or not parent_decides(tracer):
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    traceparent: bytes | str | None = None
    tracestate: bytes | str | None = None
    for key, value in items:
        if key == "traceparent":
            traceparent = value
        elif key == "tracestate":
            tracestate = value
    if traceparent is None:
        return None
    text = traceparent.decode("ascii", "replace") if isinstance(traceparent, bytes) \
        else traceparent
    match = _TRACEPARENT.fullmatch(text.strip())
    if match is None or match["version"] == "ff" or int(match["flags"], 16) & 0x01:
        return None
    trace_id, span_id = int(match["trace"], 16), int(match["span"], 16)
    if not trace_id or not span_id:
        return None
    state = None
    if tracestate is not None:
        value = tracestate.decode("ascii", "replace") if isinstance(tracestate, bytes) \
            else tracestate
        state = TraceState.from_header([value])
    return SpanContext(trace_id, span_id, is_remote=True,
                       trace_flags=TraceFlags(int(match["flags"], 16)), trace_state=state)


_SAMPLER_CACHE: dict[int, bool] = {}
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-(?P<flags>[0-9a-f]{2})"
    r"(-.*)?")


@contextmanager
def process_span(
    tracer: trace.Tracer,
    topic: str,
    headers: Sequence[tuple[str, bytes | str | None]] | dict[str, bytes] | None,
    *,
    partition: int | None = None,
    offset: int | None = None,
    group: str | None = None,
    key: str | None = None,
    attributes: dict[str, Any] | None = None,
    start_time: int | None = None,
) -> Iterator[Span]:
    """A CONSUMER span `"process {topic}"` continuing the trace carried in `headers`.

    `start_time` (ns since the epoch) backdates the span to when work on the record began.
    """
    parent = unsampled_parent(tracer, headers)
    if parent is not None:
        # nothing would be recorded: continue the parent's context (so outputs carry its
        # traceparent) without building SDK span objects (about 15 µs an event)
        with trace.use_span(NonRecordingSpan(parent), end_on_exit=False) as unrecorded:
            yield unrecorded
        return
    attrs = messaging_attributes(
        topic,
        "process",
        **{
            "messaging.destination.partition.id": None if partition is None else str(partition),
            "messaging.kafka.offset": offset,
            "messaging.consumer.group.name": group,
            "messaging.kafka.message.key": key,
        },
    )
    attrs.update(attributes or {})
    with tracer.start_as_current_span(
        span_name("process", topic),
        context=extract_context(headers),
        kind=SpanKind.CONSUMER,
        attributes=attrs,
        start_time=start_time,
    ) as span:
        yield span


def links_from_headers(
    all_headers: Sequence[Sequence[tuple[str, bytes | str | None]] | None],
    limit: int = MAX_LINKS,
) -> tuple[list[Link], int]:
    """Span links to the traces of up to `limit` consumed records, plus the total count."""
    links: list[Link] = []
    for headers in all_headers[:limit]:
        span_context = trace.get_current_span(extract_context(headers)).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return links, len(all_headers)


def traceparent(span_context: SpanContext | None) -> str | None:
    """The W3C `traceparent` of a span context (None when it is not valid)."""
    if span_context is None or not span_context.is_valid:
        return None
    return (f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{int(span_context.trace_flags):02x}")
