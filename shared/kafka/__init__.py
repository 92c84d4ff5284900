"""Kafka client factories with reliable defaults, for confluent-kafka, aiokafka and faust.

Every client gets the connection settings from `LEPTON_KAFKA_*`: bootstrap servers, security
protocol, SASL and TLS files, and the `LEPTON_KAFKA_EXTRA` librdkafka properties. Producers are
idempotent with `acks=all` and compress with lz4 (aiokafka reads it through the `lz4` package);
consumers never auto-commit (commit only after the output is durable) and read only committed
transactional data. `ensure_topics` fails fast, naming the setting, on a missing topic (with
auto-create off) or on a broker that refuses the configured security.

Modules: `clients` (librdkafka settings, producer and consumer factories, delivery),
`aio_clients` (the aiokafka and faust equivalents) and `topic_metadata` (`ensure_topics`).
"""

from shared.kafka.aio_clients import (
    aiokafka_consumer_settings,
    aiokafka_extra,
    aiokafka_producer_settings,
    aiokafka_settings,
    faust_credentials,
    faust_settings,
    ssl_context,
)
from shared.kafka.clients import (
    SETTING_OF,
    DeliveryTimeout,
    client_config,
    connection_config,
    consumer_config,
    deliver,
    make_consumer,
    make_producer,
    producer_config,
    wait_for_kafka,
)
from shared.kafka.topic_metadata import TopicMissing, ensure_topics

__all__ = [
    "SETTING_OF",
    "DeliveryTimeout",
    "TopicMissing",
    "aiokafka_consumer_settings",
    "aiokafka_extra",
    "aiokafka_producer_settings",
    "aiokafka_settings",
    "client_config",
    "connection_config",
    "consumer_config",
    "deliver",
    "ensure_topics",
    "faust_credentials",
    "faust_settings",
    "make_consumer",
    "make_producer",
    "producer_config",
    "ssl_context",
    "wait_for_kafka",
]
