"""The monitor as a real process on the embedded broker and real Redis: predictions on
predictions.log drift against the signed card's DP reference and raise one signed
`drift_detected` decision that governance's admission accepts from the monitor principal (and
the retrain flag); labels arriving late on events.governed join, live F1 equals the offline F1
of the same rows, and a live F1 far below the card's raises `quality_degraded`;
`lepton monitor report --json` shows both."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from sklearn.metrics import f1_score

from lepton.generators import transactions
from services.governance.admission import ALLOWED, Admitted, admit
from shared.allowlist import AllowList
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.events import Envelope, encode
from shared.lifecycle import parent_death
from shared.models.nets import architecture, build_model
from shared.models.predictions import PredictionLogRecord
from shared.models.reference import ReferenceCounter, spec_bins
from shared.models.registry import ModelCard, Registry
from shared.principals import public_keys_dir
from shared.readiness import ready_path
from shared.retrain import take_retrain
from shared.state import make_redis
from shared.topics import Topics
from tests.helpers import lepton, read_topic

WINDOW = 500
FEATURES = ("transaction_id", "amount", "merchant_category", "hour", "day_of_week",
            "distance_from_home_km", "card_present", "transactions_last_24h",
            "amount_vs_avg_ratio", "region")


def _rows(count: int, seed: int) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in transactions(count, seed=seed, customers=50_000)]


def _card(settings: LeptonSettings) -> ModelCard:
    rows = _rows(10_000, seed=1)
    counter = ReferenceCounter(spec_bins(load_spec("transactions")))
    counter.add_rows(rows)
    rng = random.Random(1)
    counter.add_scores([rng.random() for _ in rows])
    reference = counter.reference("test rows", counter.noise(1.0, events_per_subject=1))
    card = ModelCard(model="transactions", dataset="transactions", spec_hash="ab" * 32,
                     architecture=architecture("logistic", 3), feature_transform={},
                     metrics={"f1": 0.95}, reference=reference, status="promoted")
    return Registry(settings).save(card, build_model(architecture("logistic", 3)).state_dict())


@pytest.fixture
def monitor(lepton_env: LeptonSettings) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "LEPTON_MONITOR_WINDOW": str(WINDOW),
           "LEPTON_MONITOR_STEP": str(WINDOW), "LEPTON_MONITOR_RETRAIN": "true",
           "LEPTON_MONITOR_MIN_LABELS": "50"}
    log = lepton_env.data_dir / "monitor.log"
    lepton_env.data_dir.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "services.monitor"], env=env,
                                stdout=handle, stderr=subprocess.STDOUT,
                                preexec_fn=parent_death())
    deadline = time.monotonic() + 60
    while not ready_path(lepton_env, "monitor").exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "monitor not ready"
        time.sleep(0.1)
    yield proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, log.read_text()[-3000:]


def _predictions(producer: Producer, topic: str, rows: list[dict[str, Any]],
                 scores: list[float]) -> None:
    for row, score in zip(rows, scores, strict=True):
        record = PredictionLogRecord(
            request_id=f"req-{row['transaction_id']}", model="transactions", version=1,
            route="live", entry="grpc", inputs={k: row[k] for k in FEATURES}, score=score,
            label=score >= 0.5, latency_ms=1.0)
        producer.produce(topic, key=record.request_id.encode(), value=encode(record))
    producer.flush(10)


def _wait(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_drift_and_late_labels_through_the_running_monitor(
        lepton_env: LeptonSettings, monitor: subprocess.Popen[bytes]) -> None:
    settings = lepton_env
    _card(settings)
    topics = Topics(settings.topic_prefix)
    producer = Producer({"bootstrap.servers": settings.bootstrap_servers()})
    rng = random.Random(5)
    steady = _rows(WINDOW, seed=2)
    steady_scores = [rng.random() for _ in steady]
    client = make_redis(settings)
    key = f"{settings.redis_prefix}monitor:report:transactions:1"
    half = WINDOW // 2
    _predictions(producer, topics.prediction_log, steady[:half], steady_scores[:half])
    _wait(lambda: orjson.loads(client.get(key) or b"{}").get("filling") == {
        "predictions": half, "window": WINDOW})
    assert f"transactions v1: window filling, {half} of {WINDOW} predictions" in lepton(
        "monitor", "report").stdout
    _predictions(producer, topics.prediction_log, steady[half:], steady_scores[half:])

    def report() -> dict[str, Any] | None:
        raw = client.get(key)
        data = orjson.loads(raw) if raw else None
        return data if data and data.get("drift", {}).get("features") else None

    first = _wait(report)
    assert not [f for f in first["drift"]["features"] if f["drifted"]]
    assert first["filling"] is None

    shifted = _rows(WINDOW, seed=3)
    for i, row in enumerate(shifted):
        row["amount"] = min(row["amount"] * 3, 5000.0)
        if i % 3 == 0:
            row["merchant_category"] = "electronics"
    _predictions(producer, topics.prediction_log, shifted,
                 [rng.random() for _ in shifted])
    second = _wait(lambda: (r := report()) and r["drift"]["at"] != first["drift"]["at"] and r)
    drifted = {f["feature"] for f in second["drift"]["features"] if f["drifted"]}
    assert drifted == {"amount", "merchant_category"}

    decisions = [orjson.loads(r.value) for r in read_topic(settings, topics.audit_requests,
                                                            expect=1, timeout=30)]
    assert [d["kind"] for d in decisions] == ["drift_detected"]
    allow = AllowList(public_keys_dir(settings), ALLOWED)
    admitted = admit(orjson.dumps(decisions[0]), lambda name: name == "transactions", 10.0,
                     allow)
    assert isinstance(admitted, Admitted) and admitted.principal.name == "monitor"
    assert {f["feature"] for f in decisions[0]["detail"]["features"]} == drifted
    assert take_retrain(client, settings, "transactions").startswith("drift_detected")

    # labels arrive late, as ordinary governed events of the dataset
    labelled = steady[:200]
    truth = [rng.random() < 0.5 for _ in labelled]
    for row, label in zip(labelled, truth, strict=True):
        envelope = Envelope(event_id=f"late-{row['transaction_id']}", dataset="transactions",
                            subject_id="ps1:" + "0" * 32, occurred_at=datetime.now(UTC),
                            source="chargebacks", payload={**row, "is_fraud": label})
        producer.produce(topics.governed, key=b"s", value=encode(envelope))
    producer.flush(10)
    quality = _wait(lambda: (r := orjson.loads(client.get(key) or b"{}")).get(
        "quality", {}).get("labelled") == 200 and r["quality"])
    predicted = [s >= 0.5 for s in steady_scores[:200]]
    assert quality["f1"] == pytest.approx(f1_score(truth, predicted))

    # random labels against a card claiming F1 0.95: live quality is degraded, signed once
    kinds = sorted(orjson.loads(r.value)["kind"] for r in read_topic(
        settings, topics.audit_requests, expect=2, timeout=30))
    assert kinds == ["drift_detected", "quality_degraded"]

    shown = orjson.loads(lepton("monitor", "report", "--json").stdout)
    assert shown[0]["model"] == "transactions" and shown[0]["quality"]["labelled"] == 200
    text = lepton("monitor", "report").stdout
    assert "amount" in text and "YES" in text and "live quality: 200 labelled" in text
    typo = lepton("monitor", "report", "--model", "transactons", check=False)
    assert typo.returncode == 2 and "no model 'transactons' in the registry" in typo.stderr
