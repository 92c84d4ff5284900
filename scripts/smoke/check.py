"""Smoke checks run inside a project container on the compose network:
`check.py governed N` waits until events.governed holds N records; `check.py promoted` waits
for a `promote` announcement on models.updates. Exit 0 when seen, 1 on timeout."""

from __future__ import annotations

import json
import sys
import time

from confluent_kafka import Consumer, TopicPartition

from shared.config import LeptonSettings
from shared.kafka import client_config
from shared.topics import Topics


def _count(consumer: Consumer, topic: str) -> int:
    info = consumer.list_topics(topic, timeout=10).topics[topic]
    return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
               for p in info.partitions)


def _promoted(consumer: Consumer, topic: str) -> bool:
    info = consumer.list_topics(topic, timeout=10).topics[topic]
    consumer.assign([TopicPartition(topic, p, 0) for p in info.partitions])
    for message in consumer.consume(100, timeout=2):
        if message.error() is None and json.loads(message.value()).get("action") == "promote":
            return True
    return False


def main() -> int:
    """Run one check until it passes or times out."""
    settings = LeptonSettings()
    topics = Topics(settings.topic_prefix)
    consumer = Consumer(client_config(settings, log_level=3, **{
        "group.id": "smoke-check", "enable.auto.commit": False}))
    deadline = time.monotonic() + float(sys.argv[-1] if sys.argv[1] == "promoted" else 240)
    while time.monotonic() < deadline:
        if sys.argv[1] == "governed":
            seen = _count(consumer, topics.governed)
            print(f"events.governed: {seen}", flush=True)
            if seen >= int(sys.argv[2]):
                return 0
        elif _promoted(consumer, topics.models):
            print("models.updates: a model was promoted", flush=True)
            return 0
        time.sleep(3)
    return 1


if __name__ == "__main__":
    sys.exit(main())
