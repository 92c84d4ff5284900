"""build_model: both kinds give one logit per row and stable parameter names."""

from __future__ import annotations

import pytest
import torch

from shared.models.nets import architecture, build_model, predict_proba


def test_logistic_and_mlp_shapes_and_names() -> None:
    x = torch.randn(7, 5)
    logistic = build_model(architecture("logistic", 5))
    assert logistic(x).shape == (7,)
    assert sorted(logistic.state_dict()) == ["layers.0.bias", "layers.0.weight"]
    mlp = build_model(architecture("mlp", 5, [8, 4]))
    assert mlp(x).shape == (7,)
    assert "layers.4.weight" in mlp.state_dict()
    probs = predict_proba(mlp, x)
    assert bool(((probs > 0) & (probs < 1)).all())


def test_state_dict_round_trip_strict() -> None:
    arch = architecture("mlp", 3, [4])
    a, b = build_model(arch), build_model(arch)
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(2, 3)
    assert torch.equal(a(x), b(x))


def test_bad_architecture_is_rejected() -> None:
    with pytest.raises(ValueError, match="kind"):
        build_model({"kind": "forest", "input_dim": 3})
    with pytest.raises(ValueError, match="input_dim"):
        build_model({"kind": "logistic", "input_dim": 0})
