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

Modules: `setup` (the SDK's providers and exporters), `propagation` (W3C context in Kafka
headers and the unsampled-parent shortcut), `spans` (the messaging spans, their attributes
and links), `sampling` (what a sampler decides that the hot paths need not ask it) and
`recorded` (sampled hot-path spans handed to the SDK's exporting processors without its
per-span machinery, where the result is the SDK's own).
"""

from shared.tracing.propagation import (
    extract_context,
    inject_headers,
    remote_parent,
    traceparent,
    unsampled_parent,
)
from shared.tracing.sampling import parent_decides
from shared.tracing.setup import (
    SECONDS_BUCKETS,
    PrimedIds,
    get_tracer,
    otlp_protocol,
    setup_telemetry,
    shutdown_telemetry,
)
from shared.tracing.spans import (
    MAX_LINKS,
    links_from_headers,
    messaging_attributes,
    note_kafka_server,
    process_span,
    publish_span,
    span_name,
)

__all__ = [
    "MAX_LINKS",
    "SECONDS_BUCKETS",
    "PrimedIds",
    "extract_context",
    "get_tracer",
    "inject_headers",
    "links_from_headers",
    "messaging_attributes",
    "note_kafka_server",
    "otlp_protocol",
    "parent_decides",
    "process_span",
    "publish_span",
    "remote_parent",
    "setup_telemetry",
    "shutdown_telemetry",
    "span_name",
    "traceparent",
    "unsampled_parent",
]
