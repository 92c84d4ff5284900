"""One DP-SGD step of `dp.fit_private`, checked against per-sample gradients computed one
sample at a time with plain autograd: each sample clipped to C, the sum divided by the
expected batch; and a step over an empty Poisson batch that still draws the noise."""

from __future__ import annotations

import torch

from services.trainer import dp
from shared.models.nets import architecture, build_model
from tests.unit.trainer.per_sample import clipped_sum


def _plan(rows: int, sigma: float, clip: float) -> dp.Plan:
    return dp.Plan(rows=rows, sample_rate=1.0, steps=1, noise_multiplier=sigma,
                   max_grad_norm=clip, delta=1e-5, events_per_subject=1, target_epsilon=1.0)


def test_one_step_is_the_mean_of_per_sample_clipped_gradients() -> None:
    torch.manual_seed(3)
    net = build_model(architecture("mlp", 5, [4]))
    x, y = torch.randn(12, 5) * 4, (torch.rand(12) > 0.5).float()
    clip = 0.3
    summed, _ = clipped_sum(net, x, y, clip)
    expected = [t / len(x) for t in summed]
    before = [p.detach().clone() for p in net.parameters()]
    # q = 1: every row in the one step's batch; σ = 0: the update is the clipped mean alone
    dp.fit_private(net, torch.optim.SGD(net.parameters(), lr=1.0), x, y,
                   _plan(len(x), 0.0, clip), world=1)
    moved = [b - p.detach() for p, b in zip(net.parameters(), before, strict=True)]
    for got, want in zip(moved, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert any(float(m.abs().max()) > 0 for m in moved)


def test_an_empty_batch_is_a_noise_only_step() -> None:
    torch.manual_seed(4)
    net = build_model(architecture("logistic", 6, []))
    before = [p.detach().clone() for p in net.parameters()]
    empty_x, empty_y = torch.zeros(0, 6), torch.zeros(0)
    plan = dp.Plan(rows=50, sample_rate=0.1, steps=1, noise_multiplier=2.0, max_grad_norm=1.0,
                   delta=1e-5, events_per_subject=1, target_epsilon=1.0)
    loss = dp.fit_private(net, torch.optim.SGD(net.parameters(), lr=1.0), empty_x, empty_y,
                          plan, world=1)
    assert loss == 0.0
    moved = torch.cat([(p.detach() - b).reshape(-1)
                       for p, b in zip(net.parameters(), before, strict=True)])
    # the noise alone: σ·C / E per coordinate with E = q·rows = 5, so about 0.4, never zero
    assert float(moved.abs().min()) > 0
    assert float(moved.abs().max()) < 8 * 2.0 * 1.0 / 5
