"""Governance against hostile `audit.requests` records on the embedded broker and real Redis:
the poison decision and 1,000 fuzzed ones are refused to the DLQ and committed past, events keep
flowing, the ledger is untouched and the audit log verifies (service run in a thread)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import redis

from services.governance.admission import (
    EPSILON_OVER_MAX,
    INVALID,
    TOO_LARGE,
    UNKNOWN_DATASET,
    UNKNOWN_KIND,
)
from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger
from services.governance.verify import verify_store
from shared.config import LeptonSettings
from shared.datasets.generators import transactions
from shared.events import Header
from shared.kafka import make_producer
from shared.signing import load_public_key, public_path
from shared.topics import Topics
from tests.helpers import read_topic
from tests.hostile import POISON, hostile_decisions
from tests.integration.test_governance_service import (  # noqa: F401 (fixture)
    Running,
    _records,
    feed,
    ingest_like,
    specs,
)

CODES = {INVALID, TOO_LARGE, UNKNOWN_KIND, UNKNOWN_DATASET, EPSILON_OVER_MAX}


def test_poison_and_fuzzed_decisions_are_refused_and_committed_past(
        lepton_env: LeptonSettings, specs: Path, redis_client: redis.Redis) -> None:  # noqa: F811
    topics = Topics(lepton_env.topic_prefix)
    hostile = hostile_decisions(1000)
    assert hostile[0] == POISON
    events = [ingest_like(e) for e in transactions(200, seed=9, customers=200)]
    producer = make_producer(lepton_env)
    for i, value in enumerate(hostile):
        producer.produce(topics.audit_requests, key=f"h{i % 7}".encode(), value=value)
        if i == 500:
            feed(lepton_env, events[:100])
    assert producer.flush(30) == 0
    feed(lepton_env, events[100:])

    settings = GovernanceSettings()
    running = Running(settings, None)
    try:
        governed = read_topic(lepton_env, topics.governed, expect=200, timeout=90)
        rejected = read_topic(lepton_env, topics.rejected, expect=1000, timeout=60)
    finally:
        running.close()
    assert len(governed) == 200
    assert len(rejected) == 1000
    assert {r.headers[Header.DLQ_REASON] for r in rejected} == {b"decision_rejected"}
    codes = Counter(r.headers[Header.DLQ_DETAIL].split(b":")[0].decode() for r in rejected)
    assert set(codes) <= CODES, codes
    assert codes[EPSILON_OVER_MAX] > 0 and codes[INVALID] > 0
    assert sorted(r.value for r in rejected) == sorted(hostile)

    records = _records(lepton_env)
    kinds = Counter(r["kind"] for r in records)
    assert kinds["decision_rejected"] == 1000
    assert kinds["event_released"] == 200
    assert "dp_sgd_charge" not in kinds
    ledger = Ledger(redis_client, settings, None)
    assert ledger.spend("tiny").charges == 0
    assert ledger.spend("transactions").charges == 200
    public = load_public_key(public_path(settings.audit_key_path()))
    assert all(r.ok for r in verify_store(settings.audit_dir(), public, topics.audit_log))

    # committed past: a restart governs new events and refuses nothing again
    more = [ingest_like(e) for e in transactions(5, seed=10, customers=5)]
    feed(lepton_env, [e.model_copy(update={"event_id": f"more-{i}"})
                      for i, e in enumerate(more)])
    running = Running(settings, None)
    try:
        assert len(read_topic(lepton_env, topics.governed, expect=205, timeout=60)) == 205
    finally:
        running.close()
    assert len(read_topic(lepton_env, topics.rejected, idle=1.5)) == 1000
