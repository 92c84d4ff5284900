"""Kafka client factories with reliable defaults, for confluent-kafka, aiokafka and faust.

Every client gets the connection settings from `LEPTON_KAFKA_*`: bootstrap servers, security
protocol, SASL and TLS files, and the `LEPTON_KAFKA_EXTRA` librdkafka properties. Producers are
idempotent with `acks=all` and compress with lz4 (aiokafka reads it through the `lz4` package);
consumers never auto-commit (commit only after the output is durable) and read only committed
transactional data. `ensure_topics` fails fast, naming the setting, on a missing topic (with
auto-create off) or on a broker that refuses the configured security.
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from shared.config import ENV_PREFIX, ConfigError, LeptonSettings
from shared.tracing import note_kafka_server

log = logging.getLogger(__name__)

# librdkafka property -> the LEPTON_ variable that sets it (named in error messages)
SETTING_OF = {
    "bootstrap.servers": "KAFKA_BOOTSTRAP",
    "security.protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl.mechanism": "KAFKA_SASL_MECHANISM",
    "sasl.username": "KAFKA_SASL_USERNAME",
    "sasl.password": "KAFKA_SASL_PASSWORD",
    "ssl.ca.location": "KAFKA_SSL_CA_LOCATION",
    "ssl.certificate.location": "KAFKA_SSL_CERT_LOCATION",
    "ssl.key.location": "KAFKA_SSL_KEY_LOCATION",
}


class TopicMissing(ConfigError):
    """A topic the process needs does not exist and auto-create is off."""


def connection_config(settings: LeptonSettings) -> dict[str, Any]:
    """Bootstrap, security and `LEPTON_KAFKA_EXTRA` properties shared by every librdkafka client."""
    bootstrap = settings.bootstrap_servers()
    note_kafka_server(bootstrap)
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": settings.kafka_security_protocol.lower(),
    }
    optional = {
        "sasl.mechanism": settings.kafka_sasl_mechanism,
        "sasl.username": settings.kafka_sasl_username,
        "sasl.password": settings.kafka_sasl_password.get_secret_value()
        if settings.kafka_sasl_password else None,
        "ssl.ca.location": settings.kafka_ssl_ca_location,
        "ssl.certificate.location": settings.kafka_ssl_cert_location,
        "ssl.key.location": settings.kafka_ssl_key_location,
    }
    config.update({k: str(v) for k, v in optional.items() if v is not None})
    config.update(settings.kafka_extra)
    return config


def client_config(settings: LeptonSettings, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings for any other client (metadata readers, AdminClient, dashboards)."""
    return {**connection_config(settings), "error_cb": _log_error, **overrides}


def producer_config(
    settings: LeptonSettings, *, transactional_id: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """librdkafka settings for an idempotent (optionally transactional) producer."""
    config: dict[str, Any] = {
        **connection_config(settings),
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
        **connection_config(settings),
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
    producer: Producer = _create(
        Producer, producer_config(settings, transactional_id=transactional_id, **overrides))
    if transactional_id:
        producer.init_transactions(30)
    return producer


def make_consumer(settings: LeptonSettings, group_id: str, **overrides: Any) -> Consumer:
    """A manual-commit, read-committed consumer."""
    consumer: Consumer = _create(Consumer, consumer_config(settings, group_id, **overrides))
    return consumer


def _create(cls: type[Any], config: dict[str, Any]) -> Any:
    """Build a librdkafka client; a rejected property becomes a ConfigError naming its variable."""
    try:
        return cls(config)
    except KafkaException as error:
        text = str(error.args[0].str() if error.args and hasattr(error.args[0], "str") else error)
        names = [f"{ENV_PREFIX}{v}" for k, v in SETTING_OF.items() if k in text]
        where = ", ".join(names) or f"{ENV_PREFIX}KAFKA_EXTRA"
        raise ConfigError(f"Kafka client rejected its configuration ({where}): {text}") from None


def aiokafka_settings(settings: LeptonSettings) -> dict[str, Any]:
    """Keyword arguments for aiokafka clients: bootstrap, security protocol, SASL and TLS."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers(),
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_sasl_mechanism:
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password:
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    return kwargs


def ssl_context(settings: LeptonSettings) -> Any:
    """An ssl.SSLContext from the LEPTON_KAFKA_SSL_* files (None for non-TLS protocols)."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    import ssl

    context = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_ca_location) if settings.kafka_ssl_ca_location else None)
    if settings.kafka_ssl_cert_location:
        context.load_cert_chain(
            str(settings.kafka_ssl_cert_location),
            str(settings.kafka_ssl_key_location) if settings.kafka_ssl_key_location else None)
    return context


def aiokafka_extra(settings: LeptonSettings, client: type[Any]) -> dict[str, Any]:
    """`LEPTON_KAFKA_EXTRA` as kwargs of an aiokafka `client` class (`client.id` -> client_id);
    properties it has no parameter for are skipped with a warning."""
    accepted = inspect.signature(client).parameters
    kwargs: dict[str, Any] = {}
    for name, value in settings.kafka_extra.items():
        keyword = name.replace(".", "_")
        if keyword in accepted:
            kwargs[keyword] = value
        else:
            log.warning("%sKAFKA_EXTRA property %s has no %s equivalent; not applied there",
                        ENV_PREFIX, name, client.__name__)
    return kwargs


def aiokafka_producer_settings(settings: LeptonSettings) -> dict[str, Any]:
    """aiokafka producer kwargs: idempotent, acks=all, plus the connection settings."""
    from aiokafka import AIOKafkaProducer

    return {**aiokafka_settings(settings), "enable_idempotence": True, "acks": "all",
            **aiokafka_extra(settings, AIOKafkaProducer)}


def aiokafka_consumer_settings(settings: LeptonSettings, group_id: str) -> dict[str, Any]:
    """aiokafka consumer kwargs: manual commit, read_committed, earliest."""
    from aiokafka import AIOKafkaConsumer

    return {
        **aiokafka_settings(settings),
        **aiokafka_extra(settings, AIOKafkaConsumer),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
    }


def faust_settings(settings: LeptonSettings, app_id: str) -> dict[str, Any]:
    """faust.App kwargs: our broker and credentials, no topic declaration (the embedded broker
    cannot)."""
    brokers = ";".join(f"kafka://{hp}" for hp in settings.bootstrap_servers().split(","))
    extra: dict[str, Any] = {}
    credentials = faust_credentials(settings)
    if credentials is not None:
        extra["broker_credentials"] = credentials
    return {
        **extra,
        "id": app_id,
        "broker": brokers,
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "producer_acks": -1,
        "processing_guarantee": "exactly_once",
        "store": "memory://",
        "web_enabled": False,
    }


def faust_credentials(settings: LeptonSettings) -> Any:
    """faust broker credentials (SASL or TLS) for the configured protocol, None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    import faust

    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password else None,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=ssl_context(settings))
    return faust.SSLCredentials(ssl_context(settings))


def ensure_topics(
    settings: LeptonSettings, topics: list[str], timeout: float = 15.0
) -> dict[str, int]:
    """Partition counts of `topics`; missing ones are auto-created via metadata unless
    LEPTON_KAFKA_AUTO_CREATE is false, where a missing topic raises TopicMissing."""
    errors: list[KafkaError] = []
    producer = _create(Producer, {**connection_config(settings), "log_level": 3,
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


class DeliveryTimeout(TimeoutError):
    """Messages were still undelivered when a flush gave up: the broker is unreachable."""


def deliver(producer: Producer, what: str, timeout: float = 15.0) -> None:
    """Flush `producer`; raise DeliveryTimeout naming `what` when messages remain queued (they
    stay queued, so a later flush may still deliver them)."""
    if producer.flush(timeout) > 0:
        raise DeliveryTimeout(f"{what} was not delivered within {timeout:g} s")


def _log_error(error: Any) -> None:
    log.warning("kafka client error: %s", error)
