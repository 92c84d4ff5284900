"""The one-pass clipper against per-sample gradients computed one sample at a time with plain
autograd: the clipped sum for nets where some samples clip and some do not, frozen layers and
layers without a bias, and a refusal for parameters outside linear layers."""

from __future__ import annotations

import pytest
import torch

from services.trainer.clipping import LinearClipper
from shared.models.nets import architecture, build_model
from tests.unit.trainer.per_sample import clipped_sum


def _clipped(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float
             ) -> list[torch.Tensor]:
    clipper = LinearClipper(net, clip)
    try:
        clipper.backward(torch.nn.BCEWithLogitsLoss(reduction="sum")(net(x), y))
    finally:
        clipper.close()
    return [p.grad for p in net.parameters() if p.requires_grad]  # type: ignore[misc]


@pytest.mark.parametrize(("kind", "hidden"), [("logistic", []), ("mlp", [6]), ("mlp", [8, 3])])
def test_the_clipped_sum_equals_clipping_each_sample(kind: str, hidden: list[int]) -> None:
    torch.manual_seed(5)
    net = build_model(architecture(kind, 7, hidden))
    x = torch.randn(40, 7) * torch.linspace(0.05, 6, 40).unsqueeze(1)  # small to large norms
    y = (torch.rand(40) > 0.5).float()
    _, norms = clipped_sum(net, x, y, 1e9)
    clip = float(torch.tensor(norms).median())  # a bound that splits the batch
    want, _ = clipped_sum(net, x, y, clip)
    assert min(norms) < clip < max(norms)  # some samples are clipped, some pass unchanged
    for got, expected in zip(_clipped(net, x, y, clip), want, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_frozen_layers_and_layers_without_bias() -> None:
    torch.manual_seed(6)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5, bias=False), torch.nn.Tanh(),
                              torch.nn.Linear(5, 1))
    net[2].bias.requires_grad_(False)  # type: ignore[union-attr]
    x, y = torch.randn(16, 4) * 3, (torch.rand(16, 1) > 0.5).float()
    want, _ = clipped_sum(net, x, y, 0.4)
    got = _clipped(net, x, y, 0.4)
    assert len(got) == 2  # the first weight and the last weight
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert net[2].bias.grad is None  # type: ignore[union-attr]


def test_parameters_outside_linear_layers_are_refused() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    with pytest.raises(ValueError, match=r"nn\.Linear"):
        LinearClipper(net, 1.0)


def test_a_layer_used_twice_in_one_pass_is_refused() -> None:
    layer = torch.nn.Linear(3, 3)
    clipper = LinearClipper(layer, 1.0)
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match="exactly once"):
        clipper.backward(layer(layer(x)).sum())
    clipper.close()
