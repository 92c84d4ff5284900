"""Fixtures of the fault-injection suite: every service as a real process (own session, killed
with its whole process group in teardown), a private broker or Redis where a scenario stops
them, a steady producer, and the checks that map what came out back to what went in.

Each scenario adds one line to a session report (events in, events out, lost, duplicated,
failed requests) that is printed at the end of the run and written to
`<pytest basetemp>/faults-report.json`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Consumer

from lepton.generators import transactions
from lepton.produce import ProduceReport, publish
from shared.config import LeptonSettings
from shared.events import Envelope
from shared.kafka import client_config, ensure_topics
from shared.lifecycle import parent_death
from shared.models.registry import Registry
from shared.topics import Topics
from tests.conftest import REDIS_URL
from tests.helpers import local_mode_specs, read_topic, records_written

SERVICES = ("ingest", "governance", "trainer")
MODEL = "transactions"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/faults carries the `faults` marker."""
    for item in items:
        if "tests/faults/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.faults)


# ---------------------------------------------------------------------------- report

@dataclass
class ScenarioLine:
    """One scenario's outcome."""

    scenario: str
    events_in: int = 0
    events_out: int = 0
    lost: int = 0
    duplicated: int = 0
    failed_requests: int = 0
    notes: str = ""


@dataclass
class FaultReport:
    """Lines collected over the session."""

    lines: list[ScenarioLine] = field(default_factory=list)
    path: Path | None = None

    def add(self, line: ScenarioLine) -> None:
        """Record a line and rewrite the JSON file."""
        self.lines.append(line)
        if self.path is not None:
            self.path.write_text(json.dumps([asdict(x) for x in self.lines], indent=2) + "\n")


_REPORT = FaultReport()


@pytest.fixture(scope="session")
def fault_report(tmp_path_factory: pytest.TempPathFactory) -> FaultReport:
    """The session's scenario report (JSON under the pytest base temp dir)."""
    _REPORT.path = tmp_path_factory.getbasetemp() / "faults-report.json"
    return _REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print one line per scenario that ran."""
    if not _REPORT.lines:
        return
    terminalreporter.section("fault-injection report")
    for x in _REPORT.lines:
        terminalreporter.write_line(
            f"{x.scenario:<22} events in {x.events_in:>6}  out {x.events_out:>6}  "
            f"lost {x.lost}  duplicated {x.duplicated}  failed requests {x.failed_requests}"
            + (f"  ({x.notes})" if x.notes else ""))
    if _REPORT.path is not None:
        terminalreporter.write_line(f"written to {_REPORT.path}")


# ---------------------------------------------------------------------------- processes

def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0,
               alive: Callable[[], None] | None = None) -> None:
    """Poll `predicate` until true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


class Processes:
    """Child processes, each leading its own session; all killed (by group) in teardown."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: Counter[str] = Counter()
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """Start `argv` as `name` (log in logs/<name>-<n>.log)."""
        self.starts[name] += 1
        with (self.logs / f"{name}-{self.starts[name]}.log").open("wb") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True,
                                    preexec_fn=parent_death())
        self.procs[name] = proc
        return proc

    def signal(self, name: str, sig: int) -> None:
        """Send `sig` to the process group of `name`."""
        os.killpg(self.procs[name].pid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL `name` (its whole group) and reap it."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(15)

    def stop(self, name: str, timeout: float = 30) -> int:
        """SIGTERM `name` and wait for its exit status."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        return proc.wait(timeout)

    def log(self, name: str) -> str:
        """The tail of the latest log of `name`."""
        path = self.logs / f"{name}-{self.starts[name]}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def check_alive(self, *names: str) -> None:
        """Fail (with its log) if one of `names` has exited."""
        for name in names:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")

    def close(self) -> None:
        """SIGKILL every process group still running (also SIGCONT a stopped one)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                proc.wait(15)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """A process registry torn down (SIGKILL by group) after the test, pass or fail."""
    procs = Processes(tmp_path / "logs")
    try:
        yield procs
    finally:
        procs.close()


@dataclass
class PrivateBroker:
    """An embedded broker process only this test uses (it may be SIGSTOPped)."""

    bootstrap: str
    name: str


@pytest.fixture
def private_broker(processes: Processes, tmp_path: Path) -> PrivateBroker:
    """`python -m lepton broker` in its own session, for scenarios that pause it."""
    path = tmp_path / "bootstrap"
    env = {**os.environ, "LEPTON_DATA_DIR": str(tmp_path / "broker")}
    processes.start("broker", [sys.executable, "-m", "lepton", "broker",
                               "--bootstrap-file", str(path)], env)
    wait_until(path.exists, "the private broker", 30, lambda: processes.check_alive("broker"))
    return PrivateBroker(path.read_text().strip(), "broker")


class PrivateRedis:
    """A redis-server on a free port (no persistence) that a test may kill and restart."""

    def __init__(self, processes: Processes, workdir: Path) -> None:
        self.processes = processes
        self.port = free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers."""
        self.processes.start("redis", ["redis-server", "--port", str(self.port), "--save", "",
                                       "--appendonly", "no", "--dir", str(self.workdir),
                                       "--bind", "127.0.0.1"], dict(os.environ))
        client = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
        wait_until(up, "redis-server", 20, lambda: self.processes.check_alive("redis"))
        client.close()

    def kill(self) -> None:
        """SIGKILL the server (its data is gone: it keeps nothing on disk)."""
        self.processes.kill("redis")


@pytest.fixture
def private_redis(processes: Processes, tmp_path: Path) -> PrivateRedis:
    """A private redis-server, started."""
    server = PrivateRedis(processes, tmp_path / "redis")
    server.start()
    return server


# ---------------------------------------------------------------------------- pipeline

SERVICE_ENV = {
    # INFO: each stage logs where it resumes on every assignment, which a failed scenario needs
    "LEPTON_LOG_LEVEL": "INFO",
    "LEPTON_INGEST_INSTANCE": "faults",
    "LEPTON_INGEST_BATCH_SIZE": "500",
    "LEPTON_INGEST_SESSION_TIMEOUT_MS": "6000",
    "LEPTON_GOVERNANCE_BATCH_SIZE": "500",
    "LEPTON_GOVERNANCE_SESSION_TIMEOUT_MS": "6000",
    "LEPTON_GOVERNANCE_CHECKPOINT_SECONDS": "2",
    "LEPTON_TRAINER_DATASET": "transactions",
    "LEPTON_TRAINER_CYCLE_ROWS": "6000",
    "LEPTON_TRAINER_CYCLE_S": "4",
    "LEPTON_TRAINER_BATCH_SIZE": "1000",
    "LEPTON_TRAINER_EPOCHS": "1",
    "LEPTON_TRAINER_MAX_WAIT_S": "0.5",
    "LEPTON_TRAINER_GATE_TOLERANCE": "1.0",
    "OTEL_TRACES_SAMPLER": "always_off",
}


class Pipeline:
    """ingest → governance → trainer as processes on one topic prefix, data dir and Redis."""

    def __init__(self, processes: Processes, bootstrap: str, redis_url: str, tmp: Path) -> None:
        self.processes = processes
        self.prefix = f"f{uuid.uuid4().hex[:10]}."
        self.redis_prefix = f"faults:{uuid.uuid4().hex[:10]}:"
        self.env = {**os.environ, **SERVICE_ENV,
                    "LEPTON_KAFKA_BOOTSTRAP": bootstrap, "LEPTON_TOPIC_PREFIX": self.prefix,
                    "LEPTON_REDIS_URL": redis_url, "LEPTON_REDIS_PREFIX": self.redis_prefix,
                    "LEPTON_DATA_DIR": str(tmp / "data"),
                    # per-event charges (local mode) make exactly-once visible in the ledger
                    "LEPTON_GOVERNANCE_SPECS_DIR": str(local_mode_specs()),
                    "LEPTON_TRAINER_SPECS_DIR": str(local_mode_specs())}
        self.settings = LeptonSettings(kafka_bootstrap=bootstrap, topic_prefix=self.prefix,
                                       redis_url=redis_url, redis_prefix=self.redis_prefix,
                                       data_dir=tmp / "data")
        self.topics = Topics(self.prefix)
        ensure_topics(self.settings, self.topics.all())
        self.produced: ProduceReport | None = None
        self._producer: threading.Thread | None = None

    def start(self, name: str) -> None:
        """Start service `name` (`python -m services.<name>`)."""
        self.processes.start(name, [sys.executable, "-m", f"services.{name}"], self.env)

    def start_all(self) -> None:
        """Start ingest, governance and trainer."""
        for name in SERVICES:
            self.start(name)

    def check_alive(self) -> None:
        """Fail if a service died on its own."""
        self.processes.check_alive(*SERVICES)

    def events(self, count: int, seed: int = 5) -> list[Envelope]:
        """`count` transactions (enough customers that no subject budget runs out)."""
        return list(transactions(count, seed=seed, customers=max(100, count // 8)))

    def feed(self, events: list[Envelope], rate: float) -> None:
        """Publish `events` to events.raw at `rate`/s from a background thread."""
        def run() -> None:
            self.produced = publish(self.settings, events, total=len(events), rate=rate,
                                    show_progress=False)
        self._producer = threading.Thread(target=run, daemon=True)
        self._producer.start()

    def feed_done(self, timeout: float = 120) -> ProduceReport:
        """Wait for the producer thread; its delivery report."""
        assert self._producer is not None
        self._producer.join(timeout)
        assert not self._producer.is_alive(), "the producer did not finish"
        assert self.produced is not None
        return self.produced

    def trained_rows(self) -> int:
        """Rows consumed by every version in the registry so far."""
        total = 0
        for card in (self.settings.registry_path() / MODEL).glob("[0-9]*/card.json"):
            total += int(orjson.loads(card.read_bytes())["lineage"]["rows"]["consumed"])
        return total

    def wait_governed(self, count: int, timeout: float = 120) -> None:
        """Wait until events.governed holds `count` records (its high watermarks: committed
        or not), services alive."""
        consumer = Consumer(client_config(self.settings, log_level=3,
                                          **{"group.id": f"{self.prefix}watermarks"}))
        try:
            wait_until(lambda: records_written(consumer, self.topics.governed) >= count,
                       f"{count} governed events", timeout, self.check_alive)
        finally:
            consumer.close()

    def wait_trained(self, count: int, timeout: float = 180) -> None:
        """Wait until the registry's lineage covers `count` rows, services alive."""
        wait_until(lambda: self.trained_rows() >= count, f"the trainer to consume {count} rows",
                   timeout, self.check_alive)

    def stop_all(self) -> dict[str, int]:
        """SIGTERM every service; their exit codes."""
        return {name: self.processes.stop(name) for name in SERVICES
                if name in self.processes.procs}


@pytest.fixture
def make_pipeline(processes: Processes, tmp_path: Path
                  ) -> Callable[..., Pipeline]:
    """Build a Pipeline on a given broker/Redis (default Redis: the test server, db 15)."""
    made: list[Pipeline] = []

    def build(bootstrap: str, redis_url: str = REDIS_URL) -> Pipeline:
        pipeline = Pipeline(processes, bootstrap, redis_url, tmp_path)
        made.append(pipeline)
        return pipeline

    yield build  # type: ignore[misc]
    for pipeline in made:
        if pipeline.settings.redis_url == REDIS_URL:
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=f"{pipeline.redis_prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()


# ---------------------------------------------------------------------------- checks

@dataclass
class Accounting:
    """Where each valid input event ended up."""

    events_in: int
    governed: Counter[str]
    trained: Counter[str]
    audited: Counter[str]

    def lost(self, ids: set[str]) -> int:
        """Input ids missing from the governed stream, the model lineage or the audit log."""
        return len(ids - set(self.governed)) + len(ids - set(self.trained)) + len(
            ids - set(self.audited))

    def duplicated(self) -> int:
        """Extra copies anywhere."""
        return sum(n - 1 for c in (self.governed, self.trained, self.audited)
                   for n in c.values() if n > 1)


def account(pipeline: Pipeline, events: list[Envelope]) -> Accounting:
    """Map governed offsets, card lineage ranges and audit records back to event ids."""
    settings = pipeline.settings
    records = read_topic(settings, pipeline.topics.governed, expect=len(events), timeout=60,
                         settle=1.0)
    at: dict[int, list[tuple[int, str]]] = {}
    governed: Counter[str] = Counter()
    for r in records:
        event_id = orjson.loads(r.value)["event_id"]
        at.setdefault(r.partition, []).append((r.offset, event_id))
        governed[event_id] += 1
    trained: Counter[str] = Counter()
    registry = Registry(settings)
    for version in registry.versions(MODEL):
        card, _ = registry.load(MODEL, version)
        for partition, (low, high) in card.lineage["partitions"].items():
            trained.update(event_id for offset, event_id in at.get(int(partition), [])
                           if low <= offset <= high)
    audited: Counter[str] = Counter()
    audit_dir = settings.data_dir / "governance" / "audit"
    for seg in sorted(audit_dir.glob("p*/segments/*.seg")):
        for line in seg.read_bytes().splitlines():
            rec = orjson.loads(line)
            if rec["kind"] == "event_released":
                audited[rec["event_id"]] += 1
    return Accounting(len(events), governed, trained, audited)


def assert_exactly_once(pipeline: Pipeline, events: list[Envelope], scenario: str,
                        report: FaultReport, notes: str = "") -> Accounting:
    """Every input once in governed, model lineage and audit log; ledger = Σ charges; the
    audit log verifies. Adds the scenario's report line (also when an assertion fails)."""
    from services.governance.charge_log import ChargeLog
    from services.governance.config import GovernanceSettings
    from services.governance.ledger import Ledger
    from services.governance.privacy import DatasetPrivacy
    from shared.datasets import load_spec

    acc = account(pipeline, events)
    ids = {e.event_id for e in events}
    report.add(ScenarioLine(scenario, len(events), sum(acc.trained.values()),
                            acc.lost(ids), acc.duplicated(), 0, notes))
    for name, counts in (("governed", acc.governed), ("trained", acc.trained),
                         ("audited", acc.audited)):
        missing = ids - set(counts)
        extra = set(counts) - ids
        twice = [i for i, n in counts.items() if n > 1]
        assert not missing, f"{len(missing)} events never {name}, e.g. {sorted(missing)[:3]}"
        assert not extra, f"{len(extra)} unknown ids {name}"
        assert not twice, f"{len(twice)} events {name} more than once, e.g. {twice[:3]}"

    s = pipeline.settings
    gov = GovernanceSettings(kafka_bootstrap=s.kafka_bootstrap, topic_prefix=s.topic_prefix,
                             redis_url=s.redis_url, redis_prefix=s.redis_prefix,
                             data_dir=s.data_dir)
    client = redis.Redis.from_url(pipeline.settings.redis_url)
    try:
        spend = Ledger(client, gov, None).spend("transactions")
    finally:
        client.close()
    charges = ChargeLog(gov.ledger_dir()).read()
    event_charges = [c for c in charges if str(c["id"]).startswith("event:")]
    per_event = DatasetPrivacy(load_spec("transactions", local_mode_specs())).epsilon
    assert len(event_charges) == len({c["id"] for c in event_charges}) == len(events)
    assert math.isclose(sum(c["eps"] for c in event_charges), len(events) * per_event,
                        rel_tol=1e-9)
    assert spend.epsilon >= sum(c["eps"] for c in charges) * (1 - 1e-9), \
        f"ledger under-counts: {spend.epsilon} < Σ charges"
    assert math.isclose(spend.epsilon, sum(c["eps"] for c in charges), rel_tol=1e-9)

    result = subprocess.run([sys.executable, "-m", "lepton", "audit", "verify"],
                            env=pipeline.env, capture_output=True, text=True, timeout=120,
                            preexec_fn=parent_death())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "verified" in result.stdout
    return acc
