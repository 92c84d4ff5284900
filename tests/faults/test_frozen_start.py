"""Start-up against a broker frozen (SIGSTOP) for longer than one client timeout: the
federation's start-up reads (a site's round tasks, the coordinator's inbox, the trainer's
snapshot) and a stage's positions-topic lookup wait for the broker rather than fail, and work
once it answers again; serving answers from the registry's live version during the freeze and
follows announcements after it. Before,
each asked Kafka once: the site and the coordinator crashed, the snapshot failed its round, and
serving's watcher died, so serving neither loaded a model nor ever swapped one."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.federation.inbox import Inbox
from services.serving.hot_swap import ATTEMPT_S
from services.trainer.config import TrainerSettings
from services.trainer.site import FederatedSite
from services.trainer.snapshot import read_snapshot
from shared.allowlist import AllowList
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.federation import UPDATE_KINDS
from shared.kafka import ensure_topics
from shared.models.registry import Registry
from shared.positions import InputPositions
from shared.readiness import ready_path
from shared.topics import Topics
from tests.conftest import REDIS_URL
from tests.faults.conftest import PrivateBroker, Processes
from tests.unit.serving.support import (
    MODEL,
    ServerThread,
    announce,
    call_predict,
    record,
    save_model,
    serving_settings,
    stub,
    wait_for,
)

FROZEN_S = 20.0  # longer than the 10–15 s a metadata or offsets call waits before it fails


class Starts:
    """Start-up calls run in threads, each recording its result or its error."""

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.errors: dict[str, BaseException] = {}
        self.threads: dict[str, threading.Thread] = {}

    def run(self, name: str, call: Callable[[], Any]) -> None:
        """Start `call` in a thread named `name`."""
        def target() -> None:
            try:
                self.results[name] = call()
            except BaseException as error:
                self.errors[name] = error
        self.threads[name] = thread = threading.Thread(target=target, daemon=True)
        thread.start()

    def waiting(self) -> list[str]:
        """The calls still running."""
        return sorted(n for n, t in self.threads.items() if t.is_alive())


def _env(monkeypatch: pytest.MonkeyPatch, bootstrap: str, folder: Path) -> dict[str, Any]:
    values = {"kafka_bootstrap": bootstrap, "topic_prefix": f"f{uuid.uuid4().hex[:8]}.",
              "redis_url": REDIS_URL, "redis_prefix": f"frozen-{uuid.uuid4().hex[:8]}",
              "data_dir": folder}
    for name, value in values.items():
        monkeypatch.setenv(f"LEPTON_{name.upper()}", str(value))
    ensure_topics(LeptonSettings(), Topics(str(values["topic_prefix"])).all())
    return values


def test_federation_start_up_waits_through_a_frozen_broker(
        private_broker: PrivateBroker, processes: Processes, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    common = _env(monkeypatch, private_broker.bootstrap, tmp_path / "data")
    site_settings = TrainerSettings(**common, trainer_dataset="transactions",
                                    trainer_federation_site="site-a",
                                    trainer_federation_bootstrap=private_broker.bootstrap,
                                    trainer_federation_topic_prefix=common["topic_prefix"])
    stop = threading.Event()
    processes.signal(private_broker.name, signal.SIGSTOP)
    starts = Starts()
    site = FederatedSite(site_settings, stop)
    starts.run("site", site.run)
    starts.run("inbox", lambda: Inbox(site_settings, AllowList(
        tmp_path / "sites", {"site-a": UPDATE_KINDS}), stop))
    starts.run("snapshot", lambda: read_snapshot(site_settings, load_spec("transactions"),
                                                 "lepton-frozen", 10, stop=stop))
    try:
        time.sleep(FROZEN_S)
        assert starts.waiting() == ["inbox", "site", "snapshot"] and not starts.errors
        processes.signal(private_broker.name, signal.SIGCONT)
        deadline = time.monotonic() + 60
        while starts.waiting() != ["site"] or not ready_path(site_settings, "trainer").exists():
            assert time.monotonic() < deadline, starts.waiting()
            assert not starts.errors, starts.errors
            time.sleep(0.2)
        assert starts.results["snapshot"].train == []
        starts.results["inbox"].close()
    finally:
        processes.signal(private_broker.name, signal.SIGCONT)
        stop.set()
        starts.threads["site"].join(15)
    assert not starts.waiting() and starts.results.get("site") == 0, starts.errors


def test_serving_answers_through_a_frozen_broker_then_swaps(
        private_broker: PrivateBroker, processes: Processes, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _env(monkeypatch, private_broker.bootstrap, tmp_path / "data")
    settings = serving_settings()
    registry = Registry(settings)
    v1, v2 = save_model(settings), save_model(settings, seed=2)
    registry.set_live(MODEL, v1.version)
    processes.signal(private_broker.name, signal.SIGSTOP)
    began = time.monotonic()
    try:
        server = ServerThread(settings).start()  # once the registry's live version is loaded
        try:
            # it did not wait for Kafka: one short attempt, not a full one (ATTEMPT_S)
            assert time.monotonic() - began < ATTEMPT_S
            channel, service = stub(server.addr)
            assert call_predict(service, record(0), token=None).version == v1.version
            channel.close()
            assert not server.app.watcher.positioned.is_set()
            time.sleep(max(0.0, began + FROZEN_S - time.monotonic()))
            processes.signal(private_broker.name, signal.SIGCONT)
            wait_for(server.app.watcher.positioned.is_set, 60, "the watcher positioned")
            announce(settings, v2)
            wait_for(lambda: server.app.fleet.hosts[MODEL].rollout.live.version == v2.version,
                     what="v2 live by an announcement after the freeze")
        finally:
            server.stop()
    finally:
        processes.signal(private_broker.name, signal.SIGCONT)


def test_the_stage_runtime_positions_read_waits_through_a_frozen_broker(
        private_broker: PrivateBroker, processes: Processes, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage's positions topic is looked up once its producer is up: a freeze just then used
    to end the service (ingest exited 1 in the broker-pause scenario during start-up)."""
    common = _env(monkeypatch, private_broker.bootstrap, tmp_path / "data")
    settings = LeptonSettings(**common)
    topic = f"{common['topic_prefix']}ingest.offsets"
    stop = threading.Event()
    processes.signal(private_broker.name, signal.SIGSTOP)
    starts = Starts()
    starts.run("positions", lambda: InputPositions(settings, topic, "frozen", stop=stop))
    try:
        time.sleep(FROZEN_S)
        assert starts.waiting() == ["positions"] and not starts.errors
        processes.signal(private_broker.name, signal.SIGCONT)
        starts.threads["positions"].join(60)
        assert not starts.waiting() and not starts.errors, starts.errors
        assert starts.results["positions"].topic == topic
    finally:
        processes.signal(private_broker.name, signal.SIGCONT)
        stop.set()
