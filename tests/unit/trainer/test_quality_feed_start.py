"""The trainer's quality feed starts like every other start-up call: against an unreachable
broker it waits until stopped, and a broker frozen through its start (SIGSTOP, longer than one
client timeout) is waited for, not a crash (a real embedded broker on a fixed port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from opentelemetry.sdk.metrics import MeterProvider

from services.trainer.config import TrainerSettings
from services.trainer.quality_feed import QualityFeed
from services.trainer.telemetry import TrainerMetrics
from shared.lifecycle import parent_death
from tests.helpers import free_port, waits_until_stopped

FROZEN_S = 20.0  # longer than the 15 s a metadata or offsets call waits before it fails


def _feed(bootstrap: str, folder: Path) -> QualityFeed:
    settings = TrainerSettings(kafka_bootstrap=bootstrap, data_dir=folder / "data",
                               principals_public_dir=folder / "public")
    return QualityFeed(settings, "breast_cancer",
                       TrainerMetrics(MeterProvider().get_meter("test")))


def test_against_an_unreachable_broker_the_start_waits_until_stopped(tmp_path: Path) -> None:
    waits_until_stopped(lambda settings, stop: _feed(settings.kafka_bootstrap, tmp_path)
                        .start(stop))


def test_a_broker_frozen_through_the_start_is_waited_for(tmp_path: Path) -> None:
    port = free_port()
    ready = tmp_path / "bootstrap"
    broker = subprocess.Popen([sys.executable, "-m", "lepton", "broker", "--host", "127.0.0.1",
                               "--port", str(port), "--bootstrap-file", str(ready)],
                              env={**os.environ, "LEPTON_DATA_DIR": str(tmp_path)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              preexec_fn=parent_death())
    feed = _feed(f"127.0.0.1:{port}", tmp_path)
    outcome: list[BaseException] = []

    def start() -> None:
        try:
            feed.start(threading.Event(), catch_up_s=5.0)
        except BaseException as error:
            outcome.append(error)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the embedded broker did not start"
            time.sleep(0.05)
        broker.send_signal(signal.SIGSTOP)
        starter = threading.Thread(target=start)
        starter.start()
        time.sleep(FROZEN_S)
        assert starter.is_alive() and not outcome  # still waiting, not failed
        broker.send_signal(signal.SIGCONT)
        starter.join(60.0)
        assert not starter.is_alive() and not outcome
        assert feed._thread is not None and feed._thread.is_alive()
    finally:
        feed.close()
        broker.send_signal(signal.SIGCONT)
        broker.terminate()
        broker.wait(15)
