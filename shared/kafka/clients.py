"""librdkafka (confluent-kafka) clients: consumes the `LEPTON_KAFKA_*` connection settings,
produces client properties, idempotent (optionally transactional) producers, manual-commit
read-committed consumers, and a flush that raises DeliveryTimeout when messages stay queued.
A property librdkafka rejects becomes a ConfigError naming its variable."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from shared.config import ENV_PREFIX, ConfigError, LeptonSettings
from shared.kafka.client_logs import LIBRDKAFKA, log_client_error
from shared.tracing import note_kafka_server

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_MAX_S = 5.0
TRANSACTION_LINGER_MS = 10_000  # longer than any batch: commit_transaction sends the records
UNREACHABLE = frozenset({KafkaError._TIMED_OUT, KafkaError._TRANSPORT,
                         KafkaError._ALL_BROKERS_DOWN})

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


def connection_config(settings: LeptonSettings) -> dict[str, Any]:
    """Bootstrap, security and `LEPTON_KAFKA_EXTRA` properties shared by every librdkafka client."""
    bootstrap = settings.bootstrap_servers()
    note_kafka_server(bootstrap)
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "security.protocol": settings.kafka_security_protocol.lower(),
        "logger": LIBRDKAFKA,  # its lines in our log format, repeats left out
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
    return {**connection_config(settings), "error_cb": log_client_error, **overrides}


def producer_config(
    settings: LeptonSettings, *, transactional_id: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """librdkafka settings for an idempotent (optionally transactional) producer."""
    config: dict[str, Any] = {
        **connection_config(settings),
        # transactional: a batch's records wait for commit_transaction, which sends them
        # together; a broker that keeps no transaction state (the embedded one shows aborted
        # records to read_committed readers) would otherwise apply those sent before a freeze
        "linger.ms": TRANSACTION_LINGER_MS if transactional_id else 5,
        "compression.type": "lz4",
        "message.max.bytes": 2_000_000,
        "transaction.timeout.ms": 60_000,
        **settings.kafka_extra,
        # what exactly-once rests on: LEPTON_KAFKA_EXTRA may tune the rest, never these
        "enable.idempotence": True,
        "acks": "all",
        "error_cb": log_client_error,
    }
    if transactional_id:
        config["transactional.id"] = transactional_id
    else:
        config.pop("transaction.timeout.ms")
    config.update(overrides)
    if transactional_id:  # librdkafka: linger.ms < message.timeout.ms = transaction.timeout.ms
        config["linger.ms"] = min(config["linger.ms"], config["transaction.timeout.ms"] // 2)
    return config


def consumer_config(settings: LeptonSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings for a consumer that commits only what it finished."""
    config: dict[str, Any] = {
        **connection_config(settings),
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        # the embedded broker always waits this long on an idle fetch (Kafka returns early)
        "fetch.wait.max.ms": 100,
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 1_000,
        # also bounds how long a JoinGroup may go unanswered (plus 3 s): a join in flight when
        # the broker froze got no answer, and at librdkafka's 300 s the stage sat idle 5 min
        "max.poll.interval.ms": 60_000,
        **settings.kafka_extra,
        # what exactly-once rests on: LEPTON_KAFKA_EXTRA may tune the rest, never these
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "error_cb": log_client_error,
    }
    config.update(overrides)
    return config


def make_producer(
    settings: LeptonSettings, *, transactional_id: str | None = None,
    stop: threading.Event | None = None, **overrides: Any
) -> Producer:
    """An idempotent producer; transactional (and initialised) when an id is given. With
    `stop`, a retriable initialisation failure (broker unreachable) is retried until stop."""
    producer: Producer = create_client(
        Producer, producer_config(settings, transactional_id=transactional_id, **overrides))
    if transactional_id:
        # librdkafka: a timed-out init_transactions is resumed by calling it again
        wait_for_kafka(lambda: producer.init_transactions(30 if stop is None else 5), stop,
                       "the transactional producer")
    return producer


def broker_unreachable(error: BaseException) -> bool:
    """True for an error that says the broker did not answer: an undelivered flush, or a
    client error with an UNREACHABLE code."""
    if isinstance(error, DeliveryTimeout):
        return True
    cause = error.args[0] if isinstance(error, KafkaException) and error.args else None
    return isinstance(cause, KafkaError) and cause.code() in UNREACHABLE


def wait_for_kafka(attempt: Callable[[], T], stop: threading.Event | None, what: str, *,
                   deadline: float | None = None) -> T:
    """`attempt()`; with `stop`, a retriable KafkaException (an unreachable broker: down,
    restarting, frozen) is retried with back-off until it succeeds or `stop` is set (or the
    monotonic `deadline` passes: the last error is raised), so a service started meanwhile
    waits rather than exits and catches up once Kafka is back."""
    wait = 0.5
    while True:
        try:
            return attempt()
        except KafkaException as error:
            cause = error.args[0] if error.args else None
            # the client's own timeouts of a synchronous call (watermarks, committed offsets)
            # do not carry librdkafka's retriable flag; a broker that does not answer is one
            retriable = not isinstance(cause, KafkaError) or cause.retriable() or \
                cause.code() in UNREACHABLE
            left = math.inf if deadline is None else deadline - time.monotonic()
            if stop is None or stop.is_set() or not retriable or left <= 0:
                raise
            log.warning("%s waits for Kafka (%s); retrying in %.1f s", what, error, wait)
            if stop.wait(min(wait, left)):
                raise
            wait = min(wait * 2, RETRY_MAX_S)


def make_consumer(settings: LeptonSettings, group_id: str, **overrides: Any) -> Consumer:
    """A manual-commit, read-committed consumer."""
    consumer: Consumer = create_client(Consumer, consumer_config(settings, group_id, **overrides))
    return consumer


def error_text(error: KafkaException) -> str:
    """librdkafka's own words for a client error (its KafkaError's text), else the exception's."""
    cause = error.args[0] if error.args else None
    return cause.str() if isinstance(cause, KafkaError) else str(error)


def create_client(cls: type[Any], config: dict[str, Any]) -> Any:
    """Build a librdkafka client; a rejected property becomes a ConfigError naming its variable."""
    try:
        return cls(config)
    except KafkaException as error:
        text = error_text(error)
        names = [f"{ENV_PREFIX}{v}" for k, v in SETTING_OF.items() if k in text]
        where = ", ".join(names) or f"{ENV_PREFIX}KAFKA_EXTRA"
        raise ConfigError(f"Kafka client rejected its configuration ({where}): {text}") from None


class DeliveryTimeout(TimeoutError):
    """Messages were still undelivered when a flush gave up: the broker is unreachable."""


def deliver(producer: Producer, what: str, timeout: float = 15.0) -> None:
    """Flush `producer`; raise DeliveryTimeout naming `what` when messages remain queued (they
    stay queued, so a later flush may still deliver them)."""
    if producer.flush(timeout) > 0:
        raise DeliveryTimeout(f"{what} was not delivered within {timeout:g} s")
