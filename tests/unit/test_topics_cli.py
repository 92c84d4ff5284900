"""`lepton topics create` without a broker: the CreateTopics request it would send, inspected as
the NewTopic objects handed to the admin client (the embedded broker has no CreateTopics, so
tests/integration/test_kafka_setup.py can only check its clear refusal there)."""

from __future__ import annotations

from lepton.topics import new_topics, plan
from shared.config import LeptonSettings
from shared.topics import Topic


def test_the_request_carries_partitions_replication_compaction_and_retention() -> None:
    settings = LeptonSettings(topic_prefix="p.", kafka_bootstrap="127.0.0.1:9")
    sent = {t.topic: t for t in new_topics(plan(settings, partitions=6, replication=3))}
    assert set(sent) == {f"p.{t.value}" for t in Topic}
    for topic in sent.values():
        assert (topic.num_partitions, topic.replication_factor) == (6, 3)
    # positions checkpoints keep the latest record per key
    for name in ("p.ingest.offsets", "p.governance.offsets"):
        assert sent[name].config == {"cleanup.policy": "compact"}
    # the audit log is never expired by Kafka
    assert sent["p.audit.log"].config == {"cleanup.policy": "delete", "retention.ms": "-1"}
    assert sent["p.events.raw"].config == {"cleanup.policy": "delete"}


def test_replication_minus_one_asks_for_the_broker_default() -> None:
    settings = LeptonSettings(topic_prefix="p.", kafka_bootstrap="127.0.0.1:9")
    [first, *_] = new_topics(plan(settings, partitions=1, replication=-1))
    assert (first.num_partitions, first.replication_factor) == (1, -1)
