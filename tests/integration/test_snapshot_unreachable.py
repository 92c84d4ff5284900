"""A snapshot of events.governed (`lepton tune`, a federated site's rounds) gives up on a broker
that does not answer within its timeout, with SnapshotTimeout naming why, instead of waiting for
it as long as the process runs; a stop still ends the wait at once."""

from __future__ import annotations

import re
import threading
import time

import pytest
from confluent_kafka import KafkaException

from services.trainer.config import TrainerSettings
from services.trainer.snapshot import ATTEMPT_S, SnapshotTimeout, read_snapshot
from shared.config import LeptonSettings
from shared.datasets import load_spec
from tests.helpers import free_port


def _unreachable(monkeypatch: pytest.MonkeyPatch) -> TrainerSettings:
    monkeypatch.setenv("LEPTON_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    return TrainerSettings()


def test_an_unreachable_broker_ends_the_snapshot_at_its_timeout(
        lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _unreachable(monkeypatch)
    started = time.monotonic()
    with pytest.raises(SnapshotTimeout, match=re.escape("end offsets could not be read (is the "
                                                        "broker reachable?")):
        read_snapshot(settings, load_spec("breast_cancer"), "snapshot-test", 20,
                      stop=threading.Event(), timeout_s=3.0)
    assert 3.0 <= time.monotonic() - started < 3.0 + ATTEMPT_S  # waited, then no more


def test_a_stop_ends_the_wait_before_the_timeout(
        lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _unreachable(monkeypatch)
    stop = threading.Event()
    threading.Timer(2.0, stop.set).start()
    started = time.monotonic()
    with pytest.raises(KafkaException) as raised:  # a stop is not a timeout: the error itself
        read_snapshot(settings, load_spec("breast_cancer"), "snapshot-test", 20, stop=stop,
                      timeout_s=120.0)
    assert not isinstance(raised.value, SnapshotTimeout)
    assert time.monotonic() - started < 2.0 + ATTEMPT_S + 1.0
