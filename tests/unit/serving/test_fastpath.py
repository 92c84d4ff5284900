"""The NumPy forward pass is used only for plain Linear/ReLU stacks that match torch."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from services.serving.fastpath import compile_numpy, verified
from shared.models.nets import architecture, build_model


def _samples(width: int) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(16, width)).astype(np.float32)


def test_mlp_and_logistic_match_torch() -> None:
    for arch in (architecture("mlp", 12, (16, 8)), architecture("logistic", 12)):
        torch.manual_seed(3)
        net = build_model(arch).eval()
        forward = compile_numpy(net)
        assert forward is not None
        assert verified(net, forward, _samples(12))
        x = _samples(12)
        with torch.inference_mode():
            expected = net(torch.from_numpy(x)).numpy()
        assert np.allclose(forward(x), expected, atol=1e-5)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x) + x).squeeze(-1)


def test_unknown_modules_or_wiring_fall_back_to_torch() -> None:
    assert compile_numpy(nn.Sequential(nn.Linear(4, 1), nn.Tanh())) is None
    net = _Residual().eval()
    forward = compile_numpy(net)
    assert forward is not None
    assert not verified(net, forward, _samples(4))
