"""For the benches that feed the trainer directly: consumes envelopes, produces them on
`events.governed` as governance releases them (JSON, signed with governance's MAC, which the
trainer requires of every governed event)."""

from __future__ import annotations

from collections.abc import Iterable

from shared.config import LeptonSettings
from shared.events import CONTENT_TYPE_JSON, Envelope, Header, encode
from shared.governed_mac import MAC_HEADER, GovernedMac
from shared.kafka import make_producer
from shared.topics import Topics


def publish_governed(settings: LeptonSettings, envelopes: Iterable[Envelope]) -> int:
    """Send the envelopes, keyed by subject, and wait until delivered; returns how many."""
    topic = Topics(settings.topic_prefix).governed
    producer = make_producer(settings)
    mac = GovernedMac.load(settings)
    sent = 0
    for env in envelopes:
        value = encode(env)
        producer.produce(topic, key=env.subject_id.encode(), value=value,
                         headers=[(Header.CONTENT_TYPE, CONTENT_TYPE_JSON),
                                  (MAC_HEADER, mac.tag(value))])
        producer.poll(0)
        sent += 1
    if producer.flush(60):
        raise RuntimeError("governed events were not all delivered within 60 s")
    return sent
