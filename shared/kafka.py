"""Kafka client factories with reliable defaults, for confluent-kafka, aiokafka and faust.

Producers are idempotent with `acks=all` and compress with lz4 (aiokafka reads it through the
`lz4` package); consumers never auto-commit (commit only after the output is durable) and read
only committed transactional data.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer

from shared.config import LeptonSettings

log = logging.getLogger(__name__)


def producer_config(
    settings: LeptonSettings, *, transactional_id: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """librdkafka settings for an idempotent (optionally transactional) producer."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers(),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.max.bytes": 2_000_000,
        "error_cb": _log_error,
    }
    if transactional_id:
        config["transactional.id"] = transactional_id
        config["transaction.timeout.ms"] = 60_000
    config.update(overrides)
    return config


def consumer_config(settings: LeptonSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings for a consumer that commits only what it finished."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers(),
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
        # the embedded broker always waits this long on an idle fetch (Kafka returns early)
        "fetch.wait.max.ms": 100,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        "max.poll.interval.ms": 300_000,
        "error_cb": _log_error,
    }
    config.update(overrides)
    return config


def make_producer(
    settings: LeptonSettings, *, transactional_id: str | None = None, **overrides: Any
) -> Producer:
    """An idempotent producer; transactional (and initialised) when an id is given."""
    producer = Producer(producer_config(settings, transactional_id=transactional_id, **overrides))
    if transactional_id:
        producer.init_transactions(30)
    return producer


def make_consumer(settings: LeptonSettings, group_id: str, **overrides: Any) -> Consumer:
    """A manual-commit, read-committed consumer."""
    return Consumer(consumer_config(settings, group_id, **overrides))


def aiokafka_settings(settings: LeptonSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka producers/consumers matching the reliable defaults."""
    return {"bootstrap_servers": settings.bootstrap_servers()}


def aiokafka_producer_settings(settings: LeptonSettings) -> dict[str, Any]:
    """aiokafka producer kwargs: idempotent, acks=all."""
    return {**aiokafka_settings(settings), "enable_idempotence": True, "acks": "all"}


def aiokafka_consumer_settings(settings: LeptonSettings, group_id: str) -> dict[str, Any]:
    """aiokafka consumer kwargs: manual commit, read_committed, earliest."""
    return {
        **aiokafka_settings(settings),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }


def faust_settings(settings: LeptonSettings, app_id: str) -> dict[str, Any]:
    """faust.App kwargs: our broker, no topic declaration (the embedded broker cannot)."""
    brokers = ";".join(f"kafka://{hp}" for hp in settings.bootstrap_servers().split(","))
    return {
        "id": app_id,
        "broker": brokers,
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "producer_acks": -1,
        "processing_guarantee": "exactly_once",
        "store": "memory://",
        "web_enabled": False,
    }


def ensure_topics(
    settings: LeptonSettings, topics: list[str], timeout: float = 15.0
) -> dict[str, int]:
    """Make `topics` exist (auto-create via metadata) and return their partition counts."""
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers(), "log_level": 3})
    counts: dict[str, int] = {}
    for topic in topics:
        metadata = producer.list_topics(topic, timeout=timeout)
        info = metadata.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise KafkaException(f"topic {topic} could not be created: {info and info.error}")
        counts[topic] = len(info.partitions)
    return counts


class DeliveryTimeout(TimeoutError):
    """Messages were still undelivered when a flush gave up: the broker is unreachable."""


def deliver(producer: Producer, what: str, timeout: float = 15.0) -> None:
    """Flush `producer`; raise DeliveryTimeout naming `what` when messages remain queued (they
    stay queued, so a later flush may still deliver them)."""
    if producer.flush(timeout) > 0:
        raise DeliveryTimeout(f"{what} was not delivered within {timeout:g} s")


def _log_error(error: Any) -> None:
    log.warning("kafka client error: %s", error)
