"""Per-sample clipped gradient sums in one backward pass, for networks of linear layers
(book-keeping ghost clipping: Bu et al. 2023, "Differentially Private Optimization on Large
Model at Small Cost"). Consumes a model and each batch's summed loss; produces every trainable
parameter's `.grad` = Σᵢ min(1, C / ‖gᵢ‖)·gᵢ, where gᵢ is sample i's whole gradient, without
materialising any gᵢ. Opacus's `DPOptimizerFastGradientClipping` then adds the noise and
scales, as it does after its own ghost clipping.

For a linear layer with input rows aᵢ and output gradients bᵢ, sample i's weight gradient is
the outer product bᵢ aᵢᵀ, so ‖gᵢ‖² = Σ_layers ‖bᵢ‖²·(‖aᵢ‖² + 1) (the 1 is the bias) and the
clipped sum is (c ⊙ b)ᵀ a. One `autograd.grad` to the layers' outputs gives every bᵢ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

_STABILITY = 1e-6  # Opacus's: the clip factor is C / (‖gᵢ‖ + 1e-6), at most 1


class LinearClipper:
    """Records each linear layer's input and output during the forward pass; `backward` turns
    them into the batch's clipped per-sample gradient sum. `close` removes the hooks."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        covered = {id(p) for layer in self.layers for p in layer.parameters()}
        if any(id(p) not in covered for p in model.parameters() if p.requires_grad):
            raise ValueError("DP-SGD clips networks whose trainable parameters all belong to "
                             "nn.Linear layers (shared/models/nets.py builds only those)")
        self.max_grad_norm = max_grad_norm
        self._expected = sorted(id(m) for m in self.layers)
        self._seen: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._handles: list[RemovableHandle] = [
            layer.register_forward_hook(self._record) for layer in self.layers]

    def _record(self, module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor
                ) -> None:
        assert isinstance(module, nn.Linear)
        self._seen.append((module, inputs[0], output))

    def backward(self, loss: torch.Tensor) -> None:
        """Set each trainable parameter's `.grad` to the clipped sum over the batch whose
        summed loss is `loss` (one sample = one row of the forward pass's input)."""
        seen, self._seen = self._seen, []
        if sorted(id(m) for m, _, _ in seen) != self._expected:
            raise RuntimeError("every linear layer must run exactly once per forward pass")
        if any(a.dim() != 2 for _, a, _ in seen):
            raise ValueError("per-sample clipping here needs 2-D inputs (rows × features)")
        grads = torch.autograd.grad(loss, [out for _, _, out in seen])
        with torch.no_grad():
            squared = torch.zeros(len(seen[0][1]), dtype=loss.dtype, device=loss.device)
            for (layer, a, _), b in zip(seen, grads, strict=True):
                b_sq = b.square().sum(1)
                if layer.weight.requires_grad:
                    squared += b_sq * a.square().sum(1)
                if layer.bias is not None and layer.bias.requires_grad:
                    squared += b_sq
            factor = (self.max_grad_norm / (squared.sqrt() + _STABILITY)).clamp(max=1.0)
            for (layer, a, _), b in zip(seen, grads, strict=True):
                scaled = b * factor.unsqueeze(1)
                if layer.weight.requires_grad:
                    layer.weight.grad = scaled.t() @ a
                if layer.bias is not None and layer.bias.requires_grad:
                    layer.bias.grad = scaled.sum(0)

    def close(self) -> None:
        """Remove the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._seen = []
