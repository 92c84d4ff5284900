"""Signed quality windows: what ingest publishes verifies under its real principal key; unsigned,
forged, tampered, unknown-key and wrongly-signed records are ignored by the trainer's feed and
counted by reason (real keys, real OTel SDK), never kept."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from lepton.keyset import make_key_set
from services.ingest.quality import DatasetCounts
from services.ingest.quality_bus import summary, window_outputs
from services.ingest.quality_log import QualityLog
from services.trainer.config import TrainerSettings
from services.trainer.quality_feed import QualityFeed
from services.trainer.telemetry import TrainerMetrics
from shared.allowlist import AllowList
from shared.principals import Principal
from shared.quality_windows import (
    BAD_SIGNATURE,
    INVALID,
    SIGNERS,
    UNKNOWN_KEY,
    UNSIGNED,
    QualityWindow,
    sign_window,
    verify_window,
    window_of,
)
from shared.signing import key_id, load_or_create_private_key

T0 = 1_790_000_040.0  # a multiple of 60 s


def _principal(keys: Path, name: str) -> Principal:
    key = load_or_create_private_key(keys / f"{name}.key")
    return Principal(name, key, key_id(key.public_key()))


def _window(errors: int = 30, dataset: str = "breast_cancer") -> QualityWindow:
    return window_of(dataset, "ingest-0", datetime.fromtimestamp(T0, UTC),
                     datetime.fromtimestamp(T0 + 60, UTC), partial=False, events=100,
                     fields=10, errors=errors, min_index=0.95)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    make_key_set(tmp_path)  # every principal's key pair, public halves in public/
    return tmp_path


def test_a_quality_log_window_is_published_signed_and_verifies(keys: Path) -> None:
    counts = DatasetCounts(("a", "b"), events=10)
    counts.outcomes[0, 1] = 3  # 3 missing values of a
    counts.outcomes[1, 3] = 1  # 1 out of range value of b
    log = QualityLog(keys / "quality", "ingest-0", 60.0, lambda name: 0.95,
                     clock=lambda: T0 + 61)
    log.current["breast_cancer"] = counts
    log.start = T0
    records = log.roll()
    [out] = window_outputs(records, "t.quality.windows", _principal(keys, "ingest"))
    assert (out.topic, out.key) == ("t.quality.windows", b"breast_cancer")
    found = verify_window(out.value, AllowList(keys / "public", SIGNERS))
    assert isinstance(found, QualityWindow)
    assert (found.events, found.fields, found.errors) == (10, 2, 4)
    assert found.sum_error_rate == pytest.approx(records[0]["sum_error_rate"])
    assert found.quality_index == pytest.approx(records[0]["quality_index"]) == 0.8
    assert found.window_start == datetime.fromtimestamp(T0, UTC)
    assert found == summary(records[0]).model_copy(
        update={"key_id": found.key_id, "signature": found.signature})
    # counts only: no field names, no values
    assert set(orjson.loads(out.value)) == set(QualityWindow.model_fields)


def test_unsigned_forged_and_foreign_records_are_ignored_and_counted(keys: Path) -> None:
    reader = InMemoryMetricReader()
    metrics = TrainerMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    settings = TrainerSettings(principals_public_dir=keys / "public", data_dir=keys / "data")
    feed = QualityFeed(settings, "breast_cancer", metrics)
    ingest = _principal(keys, "ingest")
    genuine = sign_window(ingest, _window())
    body = orjson.loads(genuine)

    unsigned = orjson.dumps({**body, "key_id": None, "signature": None})
    better = orjson.dumps({**body, "errors": 0, "sum_error_rate": 0.0, "quality_index": 1.0})
    by_trainer = sign_window(_principal(keys, "trainer"), _window(errors=0))  # not on the list
    outsider = keys / "outsider"
    outsider.mkdir()
    forged = sign_window(_principal(outsider, "ingest"), _window(errors=0))  # unknown key
    # signed by ingest, but its index does not match its counts
    inconsistent = sign_window(ingest, _window().model_construct(**{
        **_window().model_dump(), "quality_index": 1.0}))
    assert verify_window(unsigned, feed.allow) == UNSIGNED
    assert verify_window(better, feed.allow) == BAD_SIGNATURE
    assert verify_window(by_trainer, feed.allow) == UNKNOWN_KEY
    assert verify_window(forged, feed.allow) == UNKNOWN_KEY
    assert verify_window(inconsistent, feed.allow) == INVALID
    assert verify_window(b"{not json", feed.allow) == INVALID

    for value in (unsigned, better, by_trainer, forged, inconsistent, b"{not json"):
        assert feed.handle(value) is False
    assert len(feed.book) == 0
    assert feed.handle(genuine) is True
    assert feed.handle(genuine) is False  # a replay counts once
    assert feed.handle(sign_window(ingest, _window(dataset="transactions"))) is False
    assert len(feed.book) == 1
    index = feed.index_for(T0, T0 + 30)
    assert index is not None and index.index == pytest.approx(0.97)

    data = reader.get_metrics_data()
    assert data is not None
    ignored = {dict(p.attributes or {})["reason"]: p.value
               for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics
               if m.name == "lepton.trainer.quality.ignored" for p in m.data.data_points}
    assert ignored == {UNSIGNED: 1, BAD_SIGNATURE: 1, UNKNOWN_KEY: 2, INVALID: 2}
