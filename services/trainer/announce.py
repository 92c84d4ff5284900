"""Publish a model version's announcement on `models.updates` (key = model), with the trace
context of a publish span in the headers (kept free of torch so the CLI starts fast)."""

from __future__ import annotations

from confluent_kafka import Producer
from opentelemetry import trace

from shared.config import LeptonSettings
from shared.events import CONTENT_TYPE_JSON, Header, HeaderList, encode
from shared.kafka import deliver
from shared.registry import ModelCard, Registry
from shared.topics import Topics
from shared.tracing import publish_span


def announce(producer: Producer, settings: LeptonSettings, registry: Registry,
             card: ModelCard, action: str, share: float | None, tracer: trace.Tracer) -> None:
    """Send `card`'s announcement with `action` (promote, rollback, canary, shadow)."""
    topic = Topics(settings.topic_prefix).models
    headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)]
    message = card.announcement(action=action, share=share, artifact_root=registry.root)
    with publish_span(tracer, topic, headers, key=card.model, attributes={
            "lepton.model.version": card.version, "lepton.model.action": action}):
        producer.produce(topic, key=card.model.encode(), value=encode(message), headers=headers)
    deliver(producer, f"announcement of {card.model} v{card.version}")
