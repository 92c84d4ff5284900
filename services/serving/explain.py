"""Per-prediction explanations: how much each raw field moved the logit away from the stated
baseline (shared.models.attribution: exact for logistic models, Integrated Gradients for MLPs).
Consumes a LoadedModel and its cleaned records; produces one Explanation per row, naming the
version that scored it. sum(attributions) = logit - baseline_logit."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.serving.errors import NotReady
from shared.events import Scalar
from shared.models.attribution import BASELINE, by_field, column_attributions, double_copy

if TYPE_CHECKING:
    from services.serving.fleet import Fleet
    from services.serving.model import LoadedModel
    from services.serving.predictor import Prediction

_lock = threading.Lock()
_double: dict[int, tuple[Any, Any]] = {}


@dataclass(frozen=True, slots=True)
class Explanation:
    """Per-field attributions of one prediction (sum = logit - baseline_logit)."""

    model: str
    version: int
    method: str  # "exact-linear" | "integrated-gradients"
    baseline: str
    logit: float
    baseline_logit: float
    attributions: dict[str, float] = field(default_factory=dict)

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        """The `n` fields with the largest absolute attribution."""
        return sorted(self.attributions.items(), key=lambda kv: -abs(kv[1]))[:n]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"model": self.model, "version": self.version, "method": self.method,
                "baseline": self.baseline, "logit": self.logit,
                "baseline_logit": self.baseline_logit, "attributions": self.attributions}


def _double_net(model: LoadedModel) -> Any:
    """The float64 copy of a loaded version's network, made once (kept while it is loaded)."""
    with _lock:
        cached = _double.get(id(model))
        if cached is None or cached[0] is not model.net:
            if len(_double) > 32:
                _double.clear()
            cached = _double[id(model)] = (model.net, double_copy(model.net))
        return cached[1]


def explain(model: LoadedModel, records: list[dict[str, Scalar]]) -> list[Explanation]:
    """One Explanation per cleaned record, attributions mapped back to raw fields."""
    if not records:
        return []
    matrix = model.transform.transform(records)
    method, per_column, logits, baseline_logit = column_attributions(
        model.net, matrix, None if method_is_linear(model) else _double_net(model))
    names, per_field = by_field(model.transform, per_column)
    return [Explanation(model.name, model.version, method, BASELINE, float(logits[i]),
                        baseline_logit,
                        {name: float(per_field[i, j]) for j, name in enumerate(names)})
            for i in range(per_field.shape[0])]


def method_is_linear(model: LoadedModel) -> bool:
    """Whether the model is logistic (exact attributions, no float64 copy needed)."""
    return model.card.architecture.get("kind") == "logistic"


def explain_predictions(fleet: Fleet, records: list[dict[str, Scalar]],
                        predictions: list[Prediction]) -> list[Explanation]:
    """Explain answered predictions of raw records, each with the version that scored it."""
    out: list[Explanation] = []
    for record, prediction in zip(records, predictions, strict=True):
        models = {m.version: m for m in fleet.host(prediction.model).loaded()}
        model = models.get(prediction.version)
        if model is None:
            raise NotReady(f"version {prediction.version} was unloaded before it could explain")
        out.extend(explain(model, [model.schema.clean(record)]))
    return out
