"""Kafka settings for the pure-Python clients: consumes the `LEPTON_KAFKA_*` connection settings
(SASL, TLS files, `LEPTON_KAFKA_EXTRA`), produces aiokafka producer/consumer keyword arguments
(idempotent, acks=all; manual commit, read_committed) and faust.App keyword arguments."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from shared.config import ENV_PREFIX, LeptonSettings

log = logging.getLogger(__name__)


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
