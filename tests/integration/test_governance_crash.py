"""SIGKILL the governance process three times mid-stream (transactions in `local` privacy mode,
so every event is charged to the per-event ledger): afterwards every input event is governed
exactly once, the ledger equals the sum of its charges, and the audit log verifies."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
import redis

from lepton.generators import transactions
from services.governance.charge_log import ChargeLog
from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger
from services.governance.privacy import DatasetPrivacy
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.events import CONTENT_TYPE_JSON, Envelope, Header, encode
from shared.kafka import make_producer
from shared.lifecycle import parent_death
from shared.pseudonym import load_pseudonymizer
from shared.topics import Topics
from tests.helpers import lepton, local_mode_specs, read_topic

N = 6000
STEP = 600  # audit leaves each run must add before it is killed


def _feed(settings: LeptonSettings, events: list[Envelope]) -> None:
    topic = Topics(settings.topic_prefix).clean
    producer = make_producer(settings)
    for event in events:
        while True:
            try:
                producer.produce(topic, key=event.subject_id.encode(), value=encode(event),
                                 headers=[(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)])
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(30) == 0


def _leaves(audit: Path) -> int:
    total = 0
    for seg in audit.glob("p*/segments/*.seg"):
        with seg.open("rb") as handle:
            total += handle.read().count(b"\n")
    return total


@pytest.mark.slow
def test_sigkill_three_times_mid_stream(lepton_env: LeptonSettings, redis_client: redis.Redis,
                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    topics = Topics(lepton_env.topic_prefix)
    events = list(transactions(N, seed=11, customers=N // 4))
    _feed(lepton_env, events)
    monkeypatch.setenv("LEPTON_GOVERNANCE_SPECS_DIR", str(local_mode_specs()))
    env = {**os.environ, "LEPTON_GOVERNANCE_BATCH_SIZE": "100",
           "LEPTON_GOVERNANCE_SESSION_TIMEOUT_MS": "3000",
           "LEPTON_GOVERNANCE_CHECKPOINT_EVERY": "700"}
    settings = GovernanceSettings()
    audit = settings.audit_dir()
    procs: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"governance-{n}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "services.governance"], env=env,
                                stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=parent_death())
        procs.append(proc)
        return proc

    try:
        for n in range(3):
            proc = start(n)
            target = _leaves(audit) + STEP
            deadline = time.monotonic() + 90
            while _leaves(audit) < target:
                assert proc.poll() is None, (tmp_path / f"governance-{n}.log").read_text()
                assert time.monotonic() < deadline, "governance made no progress"
                time.sleep(0.01)
            time.sleep(0.005 * n)
            proc.kill()
            proc.wait(10)
        assert _leaves(audit) < N, "the stream finished before the third kill"
        final = start(3)
        read_topic(lepton_env, topics.governed, expect=N, timeout=120)
        final.send_signal(signal.SIGTERM)
        assert final.wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    governed = [Envelope.model_validate_json(r.value)
                for r in read_topic(lepton_env, topics.governed, idle=2.0)]
    counts = Counter(e.event_id for e in governed)
    assert len(governed) == N
    assert set(counts) == {e.event_id for e in events}

    records = [orjson.loads(line) for seg in sorted(audit.glob("p*/segments/*.seg"))
               for line in seg.read_bytes().splitlines()]
    released = [r for r in records if r["kind"] == "event_released"]
    assert len(released) == N
    assert len({r["identity"] for r in records}) == len(records)
    leaf_of = {r["event_id"]: (r["partition"], r["leaf_index"]) for r in released}
    assert all(leaf_of[e.event_id] == (e.audit.partition, e.audit.leaf_index)
               for e in governed if e.audit is not None)

    per_event = DatasetPrivacy(load_spec("transactions", local_mode_specs())).epsilon
    assert per_event > 0.99
    ledger = Ledger(redis_client, settings, None)
    spend = ledger.spend("transactions")
    charges = ChargeLog(settings.ledger_dir()).read()
    assert spend.charges == N == len(charges) == len({c["id"] for c in charges})
    assert math.isclose(spend.epsilon, sum(c["eps"] for c in charges), rel_tol=1e-9)
    assert math.isclose(spend.epsilon, N * per_event, rel_tol=1e-9)
    assert math.isclose(sum(r["epsilon"] for r in released), spend.epsilon, rel_tol=1e-9)
    pseudonyms = load_pseudonymizer(settings)  # governance names subjects by pseudonym only
    by_subject = Counter(pseudonyms.of(e.subject_id) for e in events)
    subjects = ledger.subjects("transactions")
    assert {s: round(v[0] / per_event) for s, v in subjects.items()} == dict(by_subject)

    result = lepton("audit", "verify", check=False)
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout


@pytest.fixture(autouse=True)
def _quiet_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_GOVERNANCE_CHECKPOINT_SECONDS", "2")
