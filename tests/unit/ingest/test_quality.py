"""The data-quality index end to end: 5,000 transactions with known error rates injected per
field go through the real batch processor (real Redis); two replicas' window logs are written
and `lepton quality report --json` (a subprocess) reads them back: every field's rate matches
the injected one within 0.5 percentage points (exactly, in fact), and the index matches the
formula."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Message
from opentelemetry.sdk.trace import TracerProvider

from services.ingest.config import IngestSettings
from services.ingest.quality_log import QualityLog, read_windows
from services.ingest.worker import build_processor
from shared.datasets import load_spec
from shared.lifecycle import parent_death
from tests.conftest import REDIS_URL
from tests.unit.ingest.samples import valid_docs

EVENTS = 5000
T0 = 1_767_225_600.0  # a window start (a multiple of 60 s)


def _drop(field: str) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.pop(field)


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda payload: payload.__setitem__(field, value)


# field → (kind, share of events, how to spoil a payload); the generated transactions have no
# such errors of their own, only a few values beyond a clip bound (counted in `_natural`)
INJECTED: dict[str, tuple[str, float, Callable[[dict[str, Any]], None]]] = {
    "amount": ("missing", 0.05, _drop("amount")),  # imputed, not rejected
    "hour": ("out_of_range", 0.02, _set("hour", 30)),
    "card_present": ("wrong_type", 0.03, _set("card_present", "perhaps")),
    "transactions_last_24h": ("clipped", 0.04, _set("transactions_last_24h", 70)),
    "region": ("invalid", 0.01, _set("region", "atlantis")),
    "merchant_category": ("missing", 0.02, _drop("merchant_category")),  # required: rejected
}


def _spoiled() -> tuple[list[bytes], dict[str, int]]:
    """The spoiled events, and per field how many of its values lie beyond a clip bound."""
    docs = valid_docs(EVENTS, seed=17)
    rng = random.Random(5)
    spoiled: dict[str, set[int]] = {}
    for field, (_, share, spoil) in INJECTED.items():
        spoiled[field] = set(rng.sample(range(EVENTS), round(share * EVENTS)))
        for index in spoiled[field]:
            spoil(docs[index]["payload"])
    natural = {f.name: sum(1 for i, doc in enumerate(docs) if i not in spoiled.get(f.name, ())
                           and not f.clip_min <= doc["payload"][f.name] <= f.clip_max)
               for f in load_spec("transactions").fields
               if f.clip_min is not None and f.clip_max is not None}
    return [orjson.dumps(doc) for doc in docs], natural


def test_injected_error_rates_come_back_per_field_and_the_index_follows_the_formula(
        redis_prefix: str, tmp_path: Path) -> None:
    settings = IngestSettings(redis_url=REDIS_URL, redis_prefix=redis_prefix,
                              topic_prefix="q.", data_dir=tmp_path, kafka_bootstrap="unused:1")
    processor = build_processor(settings, TracerProvider().get_tracer("test"))
    now = [T0 + 1]
    logs = [QualityLog(settings.quality_dir(), replica, 60.0, processor.min_index,
                       clock=lambda: now[0]) for replica in ("ingest-a", "ingest-b")]
    values, natural = _spoiled()
    for start in range(0, EVENTS, 1000):  # two replicas share the batches of one window
        batch = [Message(topic="q.events.raw", partition=0, offset=start + i, key=None,
                         value=v, headers=[], timestamp=(1, 1_767_225_600_000))
                 for i, v in enumerate(values[start:start + 1000])]
        logs[(start // 1000) % 2].add(processor.process(batch).quality)
    now[0] = T0 + 61
    for log in logs:
        assert log.roll()  # the window is over: one line each
    assert len(read_windows(settings.quality_dir())) == 1  # the replicas' lines add up

    out = subprocess.run([sys.executable, "-m", "lepton", "quality", "report", "--json",
                          "--dataset", "transactions"], capture_output=True, text=True,
                         check=True, timeout=60, preexec_fn=parent_death(),
                         env={**os.environ, "LEPTON_DATA_DIR": str(tmp_path)})
    [entry] = json.loads(out.stdout)["datasets"]
    [window] = entry["windows"]
    assert (window["events"], sorted(window["replicas"])) == (EVENTS, ["ingest-a", "ingest-b"])
    fields = window["fields"]
    spec = load_spec("transactions")
    assert list(fields) == [f.name for f in spec.fields]
    expected = {}
    for name, row in fields.items():
        kind, share, _ = INJECTED.get(name, ("missing", 0.0, None))
        assert abs(row["error_rate"] - share) <= 0.005, name  # the bound
        assert row[kind] == round(share * EVENTS), name  # exactly the injected values
        assert row["clipped"] == natural.get(name, 0) + (kind == "clipped") * row[kind], name
        expected[name] = (round(share * EVENTS) + natural.get(name, 0) * (kind != "clipped")
                          ) / EVENTS
        assert abs(row["error_rate"] - expected[name]) < 1e-12, name
    assert fields["amount"]["imputed"] == fields["amount"]["missing"]
    assert fields["merchant_category"]["rejected"] == fields["merchant_category"]["missing"]
    rates = [row["error_rate"] for row in fields.values()]
    assert abs(window["sum_error_rate"] - sum(rates)) < 1e-9
    assert abs(window["sum_error_rate"] - sum(expected.values())) < 1e-9
    assert abs(window["quality_index"] - (1 - sum(rates) / len(rates))) < 1e-9
    assert entry["min_index"] == spec.quality.min_index
    assert window["below_min_index"] is False  # 1 − 0.17 / 16 ≈ 0.989 ≥ 0.95
    worst = [row["field"] for row in entry["worst_fields"]]
    assert worst[:3] == ["amount", "transactions_last_24h", "card_present"]
    # events are rejected by the first failing field, but every field is counted in every one
    rejected = window["rejected"]
    assert rejected <= sum(round(s * EVENTS) for f, (k, s, _) in INJECTED.items()
                           if f not in ("amount", "transactions_last_24h"))
    assert rejected == sum(row["rejected"] for row in fields.values())

    typo = subprocess.run([sys.executable, "-m", "lepton", "quality", "report", "--dataset",
                           "transactons"], capture_output=True, text=True, timeout=60,
                          preexec_fn=parent_death(),
                          env={**os.environ, "LEPTON_DATA_DIR": str(tmp_path)})
    assert typo.returncode == 2 and "unknown dataset 'transactons'" in typo.stderr


def test_a_window_below_min_index_is_flagged_and_a_stop_writes_a_partial_window(
        tmp_path: Path) -> None:
    from services.ingest.quality import BatchQuality, DatasetCounts

    counts = DatasetCounts(("a", "b"), events=10)
    counts.outcomes[:, 0] = [10, 4]
    counts.outcomes[1, 2] = 6  # b: 60 % wrong type
    batch = BatchQuality()
    batch.datasets["d"] = counts
    log = QualityLog(tmp_path, "r", 60.0, lambda name: 0.9, clock=lambda: T0 + 5)
    log.add(batch)
    [record] = log.roll(final=True)
    assert record["partial"] is True
    assert (record["sum_error_rate"], record["quality_index"]) == (0.6, 0.7)
    from services.ingest.quality_report import report

    [entry] = report(tmp_path)["datasets"]
    assert entry["windows"][0]["below_min_index"] is True
    assert entry["worst_fields"][0] == {
        "field": "b", "missing_rate": 0.0, "wrong_type_rate": 0.6, "out_of_range_rate": 0.0,
        "invalid_rate": 0.0, "clipped_rate": 0.0, "imputed_rate": 0.0, "rejected_rate": 0.0,
        "error_rate": 0.6}
    (tmp_path / "broken.jsonl").write_text("not json\n")
    assert len(read_windows(tmp_path)) == 1  # an unreadable line is skipped
