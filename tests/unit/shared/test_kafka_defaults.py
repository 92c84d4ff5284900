"""LEPTON_KAFKA_EXTRA tunes librdkafka's defaults but never what exactly-once rests on, and a
service start (topic checks, the transactional producer's initialisation) waits for an
unreachable broker until it is stopped (real sockets, a real embedded broker started late on a
fixed port)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from shared.config import LeptonSettings
from shared.kafka import consumer_config, ensure_topics, make_producer, producer_config
from shared.kafka.clients import TRANSACTION_LINGER_MS
from shared.lifecycle import parent_death
from tests.helpers import free_port, waits_until_stopped


def test_extra_overrides_tunables_but_not_exactly_once_properties() -> None:
    settings = LeptonSettings(kafka_bootstrap="k:9092", kafka_extra={
        "max.poll.interval.ms": 123_000, "linger.ms": 50, "enable.auto.commit": True,
        "isolation.level": "read_uncommitted", "acks": "1", "enable.idempotence": False})
    consumer = consumer_config(settings, "g")
    assert consumer["max.poll.interval.ms"] == 123_000
    assert (consumer["enable.auto.commit"], consumer["isolation.level"]) == (
        False, "read_committed")
    producer = producer_config(settings, transactional_id="t")
    assert producer["linger.ms"] == 50
    assert (producer["acks"], producer["enable.idempotence"]) == ("all", True)
    assert producer["transactional.id"] == "t"


def test_a_transactional_producer_holds_records_until_its_commit() -> None:
    settings = LeptonSettings(kafka_bootstrap="k:9092")
    assert producer_config(settings)["linger.ms"] == 5
    assert producer_config(settings, transactional_id="t")["linger.ms"] == TRANSACTION_LINGER_MS
    # librdkafka refuses a linger not below the transaction timeout (its message timeout)
    short = producer_config(settings, transactional_id="t", **{"transaction.timeout.ms": 4000})
    assert short["linger.ms"] == 2000


def test_default_join_wait_is_bounded_below_librdkafkas_five_minutes() -> None:
    config = consumer_config(LeptonSettings(kafka_bootstrap="k:9092"), "g")
    assert config["max.poll.interval.ms"] <= 60_000


def test_without_stop_an_unreachable_broker_fails_fast() -> None:
    settings = LeptonSettings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    began = time.monotonic()
    with pytest.raises(KafkaException, match="no metadata for topic"):
        ensure_topics(settings, ["t.events.raw"], timeout=2.0)
    assert time.monotonic() - began < 10


def test_with_stop_a_start_waits_for_the_broker_and_a_stop_ends_the_wait() -> None:
    waits_until_stopped(lambda settings, stop: ensure_topics(settings, ["t.events.raw"],
                                                              stop=stop))


def test_with_stop_a_transactional_producer_waits_until_stopped() -> None:
    waits_until_stopped(lambda settings, stop: make_producer(
        settings, transactional_id="t-wait", stop=stop))


def test_with_stop_a_start_proceeds_once_the_broker_comes_up(tmp_path: Path) -> None:
    port = free_port()
    settings = LeptonSettings(kafka_bootstrap=f"127.0.0.1:{port}")
    found: list[dict[str, int]] = []
    initialised: list[bool] = []

    def start() -> None:
        found.append(ensure_topics(settings, ["t.events.raw"], stop=threading.Event()))
        make_producer(settings, transactional_id="t-late", stop=threading.Event())
        initialised.append(True)
    waiter = threading.Thread(target=start)
    waiter.start()
    time.sleep(3.0)
    broker = subprocess.Popen([sys.executable, "-m", "lepton", "broker", "--host", "127.0.0.1",
                               "--port", str(port), "--bootstrap-file",
                               str(tmp_path / "bootstrap")],
                              env={**os.environ, "LEPTON_DATA_DIR": str(tmp_path)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=parent_death())
    try:
        waiter.join(60.0)
        assert found == [{"t.events.raw": 4}] and initialised == [True]
    finally:
        broker.terminate()
        broker.wait(15)
