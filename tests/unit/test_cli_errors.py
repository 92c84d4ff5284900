"""The `lepton` entry point's last resort for an unreachable broker or Redis: which errors it
turns into one line (exit 69), and that it leaves every other error alone."""

from __future__ import annotations

import pytest
import redis
from confluent_kafka import KafkaError, KafkaException

from lepton.cli import _unreachable
from shared.kafka import DeliveryTimeout


def test_unreachable_clients_get_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_KAFKA_BOOTSTRAP", "kafka-1:9092")
    undelivered = DeliveryTimeout("decision d1 to audit.requests was not delivered within 15 s")
    assert _unreachable(undelivered) == ("decision d1 to audit.requests was not delivered within "
                                         "15 s; is the Kafka broker running at kafka-1:9092?")
    down = KafkaException(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))
    assert _unreachable(down) == ("cannot reach the Kafka broker (1/1 brokers are down); is it "
                                  "running at kafka-1:9092?")
    refused = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")
    assert _unreachable(refused) == ("cannot reach Redis (Error 111 connecting to 127.0.0.1:6390. "
                                     "Connection refused.); is it running at LEPTON_REDIS_URL?")


def test_other_errors_are_left_alone() -> None:
    assert _unreachable(ValueError("bug")) is None
    assert _unreachable(redis.ResponseError("WRONGTYPE")) is None
    assert _unreachable(KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))) is None
