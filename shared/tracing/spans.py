"""Kafka messaging spans: consumes a tracer, a topic and record headers, produces PRODUCER
`"send {topic}"` and CONSUMER `"process {topic}"` spans with the messaging semantic-convention
attributes (server.address/server.port of the noted Kafka bootstrap), and span links to the
traces of consumed records."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanKind

from shared.events import HeaderList
from shared.tracing.propagation import extract_context, inject_headers, unsampled_parent

MAX_LINKS = 128
_server: dict[str, Any] = {}


def note_kafka_server(bootstrap: str) -> None:
    """Remember the first bootstrap server for spans' server.address/server.port."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    if host and port.isdigit():
        _server.update({"server.address": host, "server.port": int(port)})


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
