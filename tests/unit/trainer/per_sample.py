"""The test oracle for DP-SGD's clipping: per-sample gradients computed one sample at a time
with plain autograd, each clipped to C as Opacus clips (factor min(1, C / (‖g‖ + 1e-6)))."""

from __future__ import annotations

import torch


def clipped_sum(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float
                ) -> tuple[list[torch.Tensor], list[float]]:
    """The sum of the clipped per-sample gradients of the trainable parameters, and each
    sample's unclipped norm."""
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    params = [p for p in net.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(len(x)):
        grads = torch.autograd.grad(loss_fn(net(x[i:i + 1]), y[i:i + 1]), params)
        norm = float(torch.cat([g.reshape(-1) for g in grads]).norm())
        norms.append(norm)
        for t, g in zip(total, grads, strict=True):
            t += min(1.0, clip / (norm + 1e-6)) * g
    return total, norms
