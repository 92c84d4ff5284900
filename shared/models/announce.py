"""Publish a model version's announcement on `models.updates` (key = model), signed by the
announcing principal with the model's next sequence number, with the trace context of a publish
span in the headers (kept free of torch so the CLI starts fast). The trainer, `lepton models`
and the federation coordinator announce through it."""

from __future__ import annotations

from confluent_kafka import Producer
from opentelemetry import trace

from shared.announcements import next_sequence, sign_announcement
from shared.config import LeptonSettings
from shared.events import CONTENT_TYPE_JSON, Header, HeaderList, encode
from shared.kafka import deliver
from shared.models.registry import ModelCard, Registry
from shared.principals import Principal
from shared.topics import Topics
from shared.tracing import publish_span


def announce(producer: Producer, settings: LeptonSettings, registry: Registry,
             card: ModelCard, action: str, share: float | None, tracer: trace.Tracer, *,
             signer: Principal, override: bool = False) -> None:
    """Send `card`'s announcement with `action` (promote, rollback, canary, shadow), signed by
    `signer`; `override` (operator only) asks serving to accept a card the gate refused."""
    topic = Topics(settings.topic_prefix).models
    headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)]
    message = card.announcement(action=action, share=share, artifact_root=registry.root)
    message = sign_announcement(signer, message.model_copy(update={"override": override}),
                                next_sequence(registry.redis, settings, card.model))
    with publish_span(tracer, topic, headers, key=card.model, attributes={
            "lepton.model.version": card.version, "lepton.model.action": action}):
        producer.produce(topic, key=card.model.encode(), value=encode(message), headers=headers)
    deliver(producer, f"announcement of {card.model} v{card.version}")
