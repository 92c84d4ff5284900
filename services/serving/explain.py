"""Per-prediction explanations: how much each raw field moved the logit away from a stated
baseline. Consumes a LoadedModel and its cleaned records; produces one Explanation per row.

- logistic models: exact, attribution = weight x standardised value (the baseline is the
  all-zero feature vector: numeric fields at their training mean, no category, no hash bucket,
  booleans false), summed over the output columns of each raw field;
- MLPs: Integrated Gradients (captum) from the same baseline, in float64, with more steps
  until the attributions add up to logit - baseline logit within `TOLERANCE`.

In both cases sum(attributions) = logit - baseline_logit."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.events import Scalar

if TYPE_CHECKING:
    from services.serving.model import LoadedModel

BASELINE = ("all-zero standardised feature vector: numeric fields at their training mean, "
            "no category, no hash bucket, booleans false")
TOLERANCE = 1e-5
STEPS = (64, 256, 1024)
_cache_lock = threading.Lock()


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


def _owners(model: LoadedModel) -> tuple[list[str], np.ndarray[Any, np.dtype[np.int64]]]:
    """Raw field names and, per output column, the index of the field it came from."""
    names: list[str] = []
    owner: list[int] = []
    for column in model.transform.columns:
        names.append(column.name)
        owner.extend([len(names) - 1] * column.width)
    return names, np.asarray(owner, dtype=np.int64)


def _double_net(model: LoadedModel) -> Any:
    """A float64 copy of the network, made once per loaded version."""
    with _cache_lock:
        net = getattr(model, "_explain_net", None)
        if net is None:
            net = copy.deepcopy(model.net).double().eval()
            object.__setattr__(model, "_explain_net", net)
    return net


def _linear(model: LoadedModel) -> tuple[Any, Any] | None:
    from torch import nn

    layers = [m for m in model.net.modules() if not list(m.children())]
    if len(layers) == 1 and isinstance(layers[0], nn.Linear):
        weight = layers[0].weight.detach().double().numpy().reshape(-1)
        bias = 0.0 if layers[0].bias is None else float(layers[0].bias.detach().double())
        return weight, bias
    return None


def column_attributions(model: LoadedModel, matrix: np.ndarray[Any, Any]
                        ) -> tuple[str, np.ndarray[Any, Any], np.ndarray[Any, Any], float]:
    """(method, per-column attributions [n, dim], logits [n], baseline logit) for a matrix."""
    x = np.asarray(matrix, dtype=np.float64)
    linear = _linear(model)
    if linear is not None:
        weight, bias = linear
        attributions = x * weight
        return "exact-linear", attributions, attributions.sum(axis=1) + bias, bias
    import torch
    from captum.attr import IntegratedGradients

    net = _double_net(model)
    inputs = torch.from_numpy(x)
    baseline = torch.zeros_like(inputs)
    with torch.no_grad():
        logits = net(inputs).reshape(-1).numpy()
        baseline_logit = float(net(baseline[:1]).reshape(-1)[0])
    ig = IntegratedGradients(net)
    attributions = np.zeros_like(x)
    for steps in STEPS:
        result, delta = ig.attribute(inputs, baselines=baseline, n_steps=steps,
                                     method="riemann_trapezoid", return_convergence_delta=True)
        attributions = result.detach().numpy()
        if float(delta.abs().max()) < TOLERANCE:
            break
    return "integrated-gradients", attributions, logits, baseline_logit


def explain(model: LoadedModel, records: list[dict[str, Scalar]]) -> list[Explanation]:
    """One Explanation per cleaned record, attributions mapped back to raw fields."""
    if not records:
        return []
    matrix = model.transform.transform(records)
    method, per_column, logits, baseline_logit = column_attributions(model, matrix)
    names, owner = _owners(model)
    per_field = np.zeros((per_column.shape[0], len(names)))
    np.add.at(per_field.T, owner, per_column.T)
    return [Explanation(model.name, model.version, method, BASELINE, float(logits[i]),
                        baseline_logit,
                        {name: float(per_field[i, j]) for j, name in enumerate(names)})
            for i in range(per_field.shape[0])]


def global_importance(model: LoadedModel, records: list[dict[str, Scalar]]) -> dict[str, float]:
    """Mean absolute attribution per raw field over `records` (for the model card)."""
    explanations = explain(model, records)
    if not explanations:
        return {}
    fields = list(explanations[0].attributions)
    return {name: float(np.mean([abs(e.attributions[name]) for e in explanations]))
            for name in fields}
