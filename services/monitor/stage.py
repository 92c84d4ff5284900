"""The monitor's stage on the shared at-least-once runtime: consumes predictions.log
(PredictionLogRecord JSON) and events.governed (Envelopes; only their id and label are read),
keeps a sliding window of inputs and scores per model version, compares each full window every
`step` predictions with the card's reference (drift.py), joins labels to predictions for live
quality (quality.py), and produces signed decisions on audit.requests (alerts.py).

Bad records are skipped and counted (`lepton.monitor.records{outcome="skipped"}`), never
dead-lettered: they stay on their topics, which the monitor reads but does not own. The joins
(Redis) happen before any in-memory change, so a batch retried after a Redis error counts
once; a window evaluated while Redis fails is logged and skipped (the next one reports).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import redis

from services.monitor.alerts import Alerts
from services.monitor.config import MonitorSettings
from services.monitor.drift import window_drift
from services.monitor.quality import LabelJoin, LiveQuality, Predicted, Version
from services.monitor.references import References
from services.monitor.report import store_report
from services.monitor.telemetry import MonitorMetrics
from shared.datasets import DatasetSpec, Role, load_spec
from shared.events import EnvelopeError, decode, decode_envelope
from shared.models.predictions import PredictionLogRecord
from shared.service_record import count_work
from shared.stage import Output
from shared.state import make_redis
from shared.topics import Topics

if TYPE_CHECKING:
    from confluent_kafka import Message

log = logging.getLogger(__name__)
FILLING_EVERY_S = 5.0


@dataclass
class Window:
    """The latest inputs and scores of one model version."""

    size: int
    inputs: deque[dict[str, Any]] = field(init=False)
    scores: deque[float] = field(init=False)
    fresh: int = 0
    shown: int = -1  # the tenth of the window last stored as the report's `filling`
    shown_at: float = -math.inf  # and when (monotonic)

    def __post_init__(self) -> None:
        self.inputs = deque(maxlen=self.size)
        self.scores = deque(maxlen=self.size)


class MonitorStage:
    """Drift and live quality from the prediction log and governed labels."""

    name = "monitor"
    waits_out: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)

    def __init__(self, settings: MonitorSettings) -> None:
        self.settings = settings
        topics = Topics(settings.topic_prefix)
        self.log_topic = topics.prediction_log
        self.governed_topic = topics.governed
        self.inputs = [self.log_topic, self.governed_topic]
        self.outputs = [topics.audit_requests]
        self.redis = make_redis(settings)
        self.references = References(settings)
        self.join = LabelJoin(settings, self.redis)
        self.alerts = Alerts(settings, self.redis)
        self.metrics = MonitorMetrics()
        self.windows: dict[Version, Window] = {}
        self._specs: dict[str, DatasetSpec | None] = {}

    def _spec(self, dataset: str) -> DatasetSpec | None:
        if dataset not in self._specs:
            try:
                self._specs[dataset] = load_spec(dataset)
            except (FileNotFoundError, ValueError):
                self._specs[dataset] = None
        return self._specs[dataset]

    def _id_field(self, spec: DatasetSpec | None) -> str | None:
        if spec is None:
            return None
        return next((f.name for f in spec.fields if f.role is Role.ID), None)

    def _dataset(self, record: PredictionLogRecord) -> str:
        card = self.references.card(record.model, record.version)
        return card.dataset if card is not None else record.model

    def process(self, batch: list[Message]) -> list[Output]:
        """Join, window and evaluate one batch; the decisions it calls for."""
        records: list[PredictionLogRecord] = []
        predicted: list[Predicted] = []
        labels: list[tuple[str, str, bool]] = []
        skipped = 0
        for msg in batch:
            try:
                if msg.topic() == self.log_topic:
                    record = decode(PredictionLogRecord, msg.value() or b"")
                    dataset = self._dataset(record)
                    id_field = self._id_field(self._spec(dataset))
                    key = record.inputs.get(id_field) if id_field else None
                    records.append(record)
                    predicted.append(Predicted(dataset, str(key or record.request_id),
                                               record.model, record.version, record.score,
                                               record.label))
                else:
                    label = self._label(msg)
                    if label is not None:
                        labels.append(label)
            except EnvelopeError as error:
                skipped += 1
                log.warning("skipping a record of %s: %s %s", msg.topic(), error.kind,
                            error.field)
        joined = self.join.predictions(predicted) | self.join.labels(labels)
        touched = {(r.model, r.version) for r in records} | joined
        quality = {version: self.join.quality(version) for version in joined}
        outputs = [out for version, live in quality.items()
                   if (out := self._quality(version, live)) is not None]
        for record in records:
            window = self.windows.setdefault((record.model, record.version),
                                             Window(self.settings.monitor_window))
            window.inputs.append(dict(record.inputs))
            window.scores.append(record.score)
            window.fresh += 1
        self._filling({(r.model, r.version) for r in records})
        for version in touched:
            found = self.windows.get(version)
            if found is not None and len(found.inputs) == found.size and \
                    found.fresh >= self.settings.monitor_step:
                window = found
                window.fresh = 0
                try:
                    out = self._drift(version, window)
                except redis.RedisError as error:
                    log.warning("drift of %s v%d not reported: %s", *version, error)
                    continue
                if out is not None:
                    outputs.append(out)
        self.metrics.records.add(len(records), {"topic": "predictions.log", "outcome": "ok"})
        self.metrics.records.add(len(labels), {"topic": "events.governed", "outcome": "label"})
        if skipped:
            self.metrics.records.add(skipped, {"topic": "any", "outcome": "skipped"})
        self.metrics.joined.add(len(joined))
        self.metrics.decisions.add(len(outputs))
        return outputs

    def _label(self, msg: Message) -> tuple[str, str, bool] | None:
        """(dataset, id, label) of a governed event that carries its label, else None."""
        envelope = decode_envelope(msg.value() or b"")
        spec = self._spec(envelope.dataset)
        if spec is None or spec.label is None or spec.privacy.mode == "local":
            return None  # local mode's labels are randomized: no live quality from them
        value = envelope.payload.get(spec.label.name)
        if not isinstance(value, bool):
            return None
        id_field = self._id_field(spec)
        key = envelope.payload.get(id_field) if id_field else None
        return envelope.dataset, str(key or envelope.event_id), value

    def _filling(self, versions: set[Version]) -> None:
        """Store how far each version's window has filled, at each tenth of it and at least
        every FILLING_EVERY_S while predictions come, until it is full."""
        now = time.monotonic()
        for version in versions:
            window = self.windows[version]
            tenth = len(window.inputs) * 10 // window.size
            if len(window.inputs) == window.size or (
                    tenth <= window.shown and now - window.shown_at < FILLING_EVERY_S):
                continue
            try:
                store_report(self.redis, self.settings, *version, {"filling": {
                    "predictions": len(window.inputs), "window": window.size}})
            except redis.RedisError as error:
                log.warning("window filling of %s v%d not reported: %s", *version, error)
                continue
            window.shown, window.shown_at = tenth, now

    def _drift(self, version: Version, window: Window) -> Output | None:
        card = self.references.card(*version)
        model, number = version
        at = datetime.now(UTC).isoformat()
        if card is None or not card.reference:
            store_report(self.redis, self.settings, model, number, {"filling": None, "drift": {
                "at": at, "window": len(window.inputs), "features": [],
                "reference": "none in the card"}})
            return None
        results = window_drift(card.reference, list(window.inputs), list(window.scores),
                               alpha=self.settings.monitor_alpha,
                               small_window=self.settings.monitor_small_window,
                               distance_threshold=self.settings.monitor_distance_threshold)
        for item in results:
            self.metrics.set("lepton.monitor.drift", item.statistic, model=model,
                             version=number, feature=item.feature)
            self.metrics.set("lepton.monitor.drift.detected", float(item.drifted), model=model,
                             version=number, feature=item.feature)
        privacy = card.reference.get("privacy", {})
        store_report(self.redis, self.settings, model, number, {"filling": None, "drift": {
            "at": at, "window": len(window.inputs),
            "features": [item.to_dict() for item in results],
            "reference": f"{card.reference.get('source')}, {card.reference.get('rows')} rows, "
                         f"noise {privacy.get('noise')}"
                         + (f" ε={privacy['epsilon']:.3g}" if "epsilon" in privacy else "")}})
        drifted = [item for item in results if item.drifted]
        if not drifted:
            return None
        detail = {"window": len(window.inputs), "alpha": self.settings.monitor_alpha,
                  "features": [{"feature": item.feature, "test": item.test,
                                "statistic": round(item.statistic, 6),
                                "threshold": item.threshold, "p_value": item.p_value}
                               for item in drifted[:32]]}
        return self.alerts.decide("drift_detected", model, number, card.dataset, detail,
                                  ", ".join(item.feature for item in drifted))

    def _quality(self, version: Version, live: LiveQuality) -> Output | None:
        model, number = version
        for name, value in (("lepton.monitor.live.f1", live.f1),
                            ("lepton.monitor.live.roc_auc", live.roc_auc),
                            ("lepton.monitor.live.labelled", float(live.labelled))):
            if value is not None:
                self.metrics.set(name, value, model=model, version=number)
        card = self.references.card(model, number)
        offline = card.metrics.get("f1") if card is not None else None
        store_report(self.redis, self.settings, model, number,
                     {"quality": live.to_dict(), "offline_f1": offline})
        if card is None or offline is None or live.f1 is None or \
                live.labelled < self.settings.monitor_min_labels or \
                live.f1 >= offline - self.settings.monitor_f1_drop:
            return None
        detail = {"labelled": live.labelled, "live_f1": round(live.f1, 6),
                  "offline_f1": round(float(offline), 6), "live_roc_auc": live.roc_auc,
                  "f1_drop": self.settings.monitor_f1_drop}
        return self.alerts.decide("quality_degraded", model, number, card.dataset, detail,
                                  f"live F1 {live.f1:.3f} < offline {offline:.3f}")

    def due(self, final: bool) -> list[Output]:
        """Nothing is due without input."""
        return []

    def committed(self, batch: list[Message], seconds: float) -> None:
        """Count the batch as this process's work."""
        count_work(len(batch), seconds)

    def aborted(self, batch: list[Message]) -> None:
        """Not used by the at-least-once runtime."""
