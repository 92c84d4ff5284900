"""Explanations add up: sum(attributions) = logit - baseline logit (1e-4) for logistic models
(exact) and MLPs (Integrated Gradients), the logit is the one that was served, attributions are
per raw field, and each explanation names the version that scored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logit

from services.serving.explain import explain
from services.serving.inputs import RecordSchema
from services.serving.model import LoadedModel
from shared.datasets import load_spec
from shared.models.attribution import BASELINE, global_importance
from shared.models.nets import architecture, build_model
from shared.models.registry import ModelCard
from tests.unit.serving.support import fitted_transform, record


def _model(kind: str, version: int) -> LoadedModel:
    transform = fitted_transform()
    arch = architecture(kind, transform.dim, (16, 8))
    torch.manual_seed(version)
    net = build_model(arch).eval()
    if kind == "mlp":  # larger weights: a strongly non-linear surface
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(3.0)
    card = ModelCard(model="fraud", version=version, dataset="transactions", spec_hash="x",
                     architecture=arch, feature_transform=transform.to_dict())
    schema = RecordSchema(load_spec("transactions"))
    return LoadedModel("fraud", version, card, transform, net, schema)


@pytest.mark.parametrize(("kind", "method"), [("logistic", "exact-linear"),
                                              ("mlp", "integrated-gradients")])
def test_attributions_sum_to_logit_minus_baseline(kind: str, method: str) -> None:
    model = _model(kind, 7)
    records = [model.schema.clean(record(i)) for i in range(40)]
    explanations = explain(model, records)
    served = logit(model.score(records))
    fields = [c.name for c in model.transform.columns]
    for explanation, expected in zip(explanations, served, strict=True):
        assert explanation.method == method and explanation.baseline == BASELINE
        assert explanation.version == 7 and explanation.model == "fraud"
        assert list(explanation.attributions) == fields
        total = sum(explanation.attributions.values())
        assert abs(total - (explanation.logit - explanation.baseline_logit)) <= 1e-4
        assert abs(explanation.logit - expected) <= 1e-4
    assert any(abs(v) > 1e-3 for e in explanations for v in e.attributions.values())


def test_logistic_attribution_is_weight_times_standardised_value() -> None:
    model = _model("logistic", 3)
    rec = model.schema.clean(record(0))
    [explanation] = explain(model, [rec])
    x = model.transform.transform([rec])[0].astype(np.float64)
    weight = model.net.layers[0].weight.detach().double().numpy().reshape(-1)
    amount = [i for i, n in enumerate(model.transform.feature_names) if n == "amount"]
    assert explanation.attributions["amount"] == pytest.approx(float(weight[amount] @ x[amount]))
    assert explanation.baseline_logit == pytest.approx(float(model.net.layers[0].bias.detach()))


def test_global_importance_names_every_field_and_the_baseline() -> None:
    model = _model("mlp", 5)
    matrix = model.transform.transform([model.schema.clean(record(i)) for i in range(30)])
    importance = global_importance(model.net, model.transform, matrix)
    assert importance["method"] == "integrated-gradients" and importance["rows"] == 30
    assert set(importance["mean_abs_attribution"]) == {c.name for c in model.transform.columns}
    assert all(v >= 0 for v in importance["mean_abs_attribution"].values())
