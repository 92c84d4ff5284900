"""Publish a Decision on `audit.requests`, where governance seals it into the audit log.

Services other than governance, and the CLI, record what they decided about data this way,
each signing as its own principal (`shared.principals`).
"""

from __future__ import annotations

from confluent_kafka import Producer

from shared.config import LeptonSettings
from shared.events import CONTENT_TYPE_JSON, Decision, Header, HeaderList, encode
from shared.kafka import deliver
from shared.principals import Principal, sign_decision
from shared.topics import Topics
from shared.tracing import get_tracer, publish_span

_tracer = get_tracer(__name__)


def publish_decision(
    producer: Producer, settings: LeptonSettings, decision: Decision, *, signer: Principal,
    flush: bool = True,
) -> None:
    """Sign `decision` as `signer` and send it to `audit.requests` (keyed by subject or kind);
    flush unless told not to."""
    decision = sign_decision(signer, decision)
    topic = Topics(settings.topic_prefix).audit_requests
    key = decision.subject_id or decision.kind
    headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)]
    with publish_span(_tracer, topic, headers, key=key,
                      attributes={"lepton.decision.kind": decision.kind}):
        producer.produce(topic, key=key.encode(), value=encode(decision), headers=headers)
    if flush:
        deliver(producer, f"decision {decision.decision_id} to {topic}")
