"""Live quality: labels joined to predictions in Redis, then F1/AUC per model version.

Consumes predictions (from predictions.log) and labels (the dataset's label field of events on
events.governed), both keyed by the dataset's `id` field (e.g. `transaction_id`: an app puts it
in the record it scores, or uses it as the request id; the label arrives later as an ordinary
event of the dataset). Whichever comes first waits in Redis for the other (up to the label TTL),
so late labels join. Each (version, id) joins once, atomically (a Lua script: the joined set and
the pairs list change together), so a redelivered batch changes nothing. Produces, per version,
the latest `pairs` (score, predicted, true) and from them live F1, precision, recall and ROC AUC
(scikit-learn), the same functions the trainer's offline metrics use.

Redis keys (under the prefix): `monitor:pred:<dataset>:<id>` hash model → prediction,
`monitor:label:<dataset>:<id>`, `monitor:joined:<model>:<version>` set, `monitor:pairs:<model>:
<version>` list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson
import redis
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from services.monitor.config import MonitorSettings
from shared.state import rkey

JOIN = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[3]), -1)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 1
end
return 0
"""
Version = tuple[str, int]


@dataclass(frozen=True)
class Predicted:
    """One logged prediction waiting for (or meeting) its label."""

    dataset: str
    key: str
    model: str
    version: int
    score: float
    label: bool


@dataclass(frozen=True)
class LiveQuality:
    """Live metrics of one version over its latest labelled predictions."""

    labelled: int
    positives: int
    f1: float | None
    precision: float | None
    recall: float | None
    roc_auc: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def live_quality(pairs: Sequence[Sequence[float]]) -> LiveQuality:
    """F1/precision/recall of the predicted labels and ROC AUC of the scores (None where a
    metric is undefined)."""
    if not pairs:
        return LiveQuality(0, 0, None, None, None, None)
    data = np.asarray(pairs, dtype=np.float64)
    scores, predicted, truth = data[:, 0], data[:, 1] > 0.5, data[:, 2] > 0.5
    auc = float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else None
    return LiveQuality(len(data), int(truth.sum()),
                       float(f1_score(truth, predicted, zero_division=0)),
                       float(precision_score(truth, predicted, zero_division=0)),
                       float(recall_score(truth, predicted, zero_division=0)), auc)


class LabelJoin:
    """Predictions and labels meeting in Redis."""

    def __init__(self, settings: MonitorSettings, client: redis.Redis[bytes]) -> None:
        self.settings = settings
        self.redis = client
        self.ttl = settings.monitor_label_ttl_s
        self._join = client.register_script(JOIN)

    def _pred_key(self, dataset: str, key: str) -> str:
        return rkey(self.settings, "monitor", "pred", dataset, key)

    def _label_key(self, dataset: str, key: str) -> str:
        return rkey(self.settings, "monitor", "label", dataset, key)

    def _pairs_key(self, version: Version) -> str:
        return rkey(self.settings, "monitor", "pairs", version[0], str(version[1]))

    def _joined_key(self, version: Version) -> str:
        return rkey(self.settings, "monitor", "joined", version[0], str(version[1]))

    def predictions(self, items: Sequence[Predicted]) -> set[Version]:
        """Store predictions; join those whose label is already here. The versions joined."""
        if not items:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for item in items:
            key = self._pred_key(item.dataset, item.key)
            pipe.hset(key, item.model, orjson.dumps([item.version, item.score, item.label]))
            pipe.expire(key, self.ttl)
            pipe.get(self._label_key(item.dataset, item.key))
        replies = pipe.execute()
        joined: set[Version] = set()
        for item, label in zip(items, replies[2::3], strict=True):
            if label is not None and self._pair(item, label == b"1"):
                joined.add((item.model, item.version))
        return joined

    def labels(self, items: Sequence[tuple[str, str, bool]]) -> set[Version]:
        """Store (dataset, id, label) labels; join the predictions already here."""
        if not items:
            return set()
        pipe = self.redis.pipeline(transaction=False)
        for dataset, key, label in items:
            pipe.set(self._label_key(dataset, key), b"1" if label else b"0", ex=self.ttl)
            pipe.hgetall(self._pred_key(dataset, key))
        replies = pipe.execute()
        joined: set[Version] = set()
        for (dataset, key, label), found in zip(items, replies[1::2], strict=True):
            for model, raw in found.items():
                version, score, predicted = orjson.loads(raw)
                item = Predicted(dataset, key, model.decode(), int(version), float(score),
                                 bool(predicted))
                if self._pair(item, label):
                    joined.add((item.model, item.version))
        return joined

    def _pair(self, item: Predicted, truth: bool) -> bool:
        version = (item.model, item.version)
        pair = orjson.dumps([item.score, int(item.label), int(truth)])
        return bool(self._join(keys=[self._joined_key(version), self._pairs_key(version)],
                               args=[item.key, pair, self.settings.monitor_quality_pairs,
                                     self.ttl]))

    def quality(self, version: Version) -> LiveQuality:
        """Live metrics of `version` over its kept pairs."""
        raw = self.redis.lrange(self._pairs_key(version), 0, -1)
        return live_quality([orjson.loads(item) for item in raw])
