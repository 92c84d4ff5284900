"""OpenTelemetry SDK setup for a process entry point: consumes the service name and the standard
OTEL_* variables, produces the global tracer and meter providers (OTLP over gRPC or
http/protobuf, a Prometheus endpoint, sub-second buckets for histograms in seconds) and their
shutdown; tracers come from the global provider."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

log = logging.getLogger(__name__)

# seconds: 1 ms .. 60 s (the SDK's default buckets start at 5, useless for latencies)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)


def setup_telemetry(
    service_name: str,
    *,
    span_exporter: SpanExporter | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "0.0.0.0",  # noqa: S104
) -> TracerProvider:
    """Install the global tracer and meter providers; call once, from a process entry point.

    Spans go to `span_exporter` when given, else to OTLP when an OTLP endpoint is configured;
    metrics go to OTLP likewise and to a Prometheus endpoint on `metrics_host` when
    `metrics_port` is set.
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
    _setup_metrics(resource, _otlp_wanted("METRICS"), metrics_port, metrics_host)
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
        # a missing attribute of a thread-local costs a raised AttributeError: pop its dict
        primed: int | None = self._next.__dict__.pop("trace_id", None)
        return super().generate_trace_id() if primed is None else primed


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


def _setup_metrics(resource: Resource, otlp: bool, metrics_port: int | None,
                   metrics_host: str) -> None:
    from opentelemetry.sdk.metrics import Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    readers: list[MetricReader] = []
    if otlp:
        readers.append(PeriodicExportingMetricReader(_otlp_exporter("METRICS")))
    if metrics_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host.strip("[]"))
        readers.append(PrometheusMetricReader())
    seconds = View(instrument_type=Histogram, instrument_unit="s",
                   aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS))
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers,
                                             views=[seconds]))


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
