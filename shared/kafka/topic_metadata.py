"""Topic checks at start: consumes the topic names a process needs and the connection
settings, produces their partition counts (auto-creating missing topics via metadata unless
LEPTON_KAFKA_AUTO_CREATE is false) or fails fast: TopicMissing, or a ConfigError naming the
security settings when a secured broker refuses the connection. Given a stop event, an
unreachable (plaintext) broker is waited for until stop instead of failing."""

from __future__ import annotations

import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from shared.config import ENV_PREFIX, ConfigError, LeptonSettings
from shared.kafka.clients import connection_config, create_client, wait_for_kafka


class TopicMissing(ConfigError):
    """A topic the process needs does not exist and auto-create is off."""


def ensure_topics(
    settings: LeptonSettings, topics: list[str], timeout: float = 15.0,
    stop: threading.Event | None = None,
) -> dict[str, int]:
    """Partition counts of `topics`; missing ones are auto-created via metadata unless
    LEPTON_KAFKA_AUTO_CREATE is false, where a missing topic raises TopicMissing. With `stop`,
    an unreachable broker is retried with back-off until it answers or `stop` is set."""
    return wait_for_kafka(
        lambda: _ensure_topics(settings, topics, timeout if stop is None else min(timeout, 5.0)),
        stop, "the topic check")


def _ensure_topics(settings: LeptonSettings, topics: list[str], timeout: float
                   ) -> dict[str, int]:
    errors: list[KafkaError] = []
    producer = create_client(Producer, {**connection_config(settings), "log_level": 3,
                                        "allow.auto.create.topics": settings.kafka_auto_create,
                                        "error_cb": errors.append})
    counts: dict[str, int] = {}
    failure: Exception | None = None
    for topic in topics:
        found = _topic_metadata(producer, topic, settings, errors, timeout)
        if isinstance(found, Exception):
            failure = found
            break
        counts[topic] = len(found.partitions)
    # close the handle now: a traceback kept by the caller must not keep it reconnecting
    del producer
    if failure is not None:
        raise failure
    return counts


def _topic_metadata(producer: Producer, topic: str, settings: LeptonSettings,
                    errors: list[KafkaError], timeout: float) -> Any:
    """The topic's metadata, or the exception to raise (returned so no frame keeps the client)."""
    deadline = time.monotonic() + timeout
    while True:
        info = None
        try:
            info = producer.list_topics(topic, timeout=min(2.0, timeout)).topics.get(topic)
        except KafkaException as error:
            errors.append(error.args[0])
        producer.poll(0)  # serves error_cb
        if info is not None and info.error is None and info.partitions:
            return info
        missing = info is not None and info.error is not None and \
            info.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
        if missing and not settings.kafka_auto_create:
            return TopicMissing(
                f"topic {topic} does not exist and {ENV_PREFIX}KAFKA_AUTO_CREATE=false: "
                "create the topics with `lepton topics create` first")
        secured = settings.kafka_security_protocol != "PLAINTEXT"
        if (errors and secured) or time.monotonic() > deadline:
            return _unreachable(settings, topic, info, errors)


def _unreachable(settings: LeptonSettings, topic: str, info: Any,
                 errors: list[KafkaError]) -> Exception:
    detail = "; ".join(str(e) for e in errors[-3:]) or str(info and info.error)
    protocol = settings.kafka_security_protocol
    message = (f"no metadata for topic {topic} from Kafka at {settings.bootstrap_servers()} "
               f"with {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={protocol}: {detail}")
    if protocol != "PLAINTEXT":
        return ConfigError(f"{message} (check {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL and the "
                           f"{ENV_PREFIX}KAFKA_SASL_*/SSL_* settings against the broker's "
                           "listener)")
    return KafkaException(message)
