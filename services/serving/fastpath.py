"""A NumPy forward pass for small feed-forward networks (Linear/ReLU stacks), used instead of
torch when it provably matches: per-call torch dispatch costs more than the arithmetic of the
tiny models served here. A network is only compiled when every module is understood, and the
result is checked against torch on sample inputs before it is ever used."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Forward = Callable[[Matrix], Matrix]
TOLERANCE = 1e-5


def _layers(net: Any) -> list[Any] | None:
    from torch import nn

    leaves = [m for m in net.modules() if not list(m.children())]
    containers = [m for m in net.modules() if list(m.children())]
    if not all(isinstance(c, nn.Sequential) or c is net for c in containers):
        return None
    if not leaves or not all(isinstance(m, nn.Linear | nn.ReLU | nn.Identity) for m in leaves):
        return None
    return leaves


def compile_numpy(net: Any) -> Forward | None:
    """A NumPy function computing `net`'s logits, or None when `net` is not a plain stack."""
    from torch import nn

    layers = _layers(net)
    if layers is None:
        return None
    steps: list[tuple[str, Matrix | None, Matrix | None]] = []
    for layer in layers:
        if isinstance(layer, nn.Linear):
            weight = layer.weight.detach().cpu().numpy().astype(np.float32).T.copy()
            bias = None if layer.bias is None else \
                layer.bias.detach().cpu().numpy().astype(np.float32)
            steps.append(("linear", weight, bias))
        elif isinstance(layer, nn.ReLU):
            steps.append(("relu", None, None))

    def forward(x: Matrix) -> Matrix:
        out = x
        for kind, weight, bias in steps:
            if kind == "linear":
                out = out @ weight  # type: ignore[operator]
                if bias is not None:
                    out += bias
            else:
                out = np.maximum(out, np.float32(0.0))
        return out.reshape(out.shape[0], -1)[:, 0] if out.ndim > 1 else out

    return forward


def verified(net: Any, forward: Forward, samples: Matrix) -> bool:
    """True when `forward` matches torch's logits on `samples` plus random rows."""
    import torch

    rng = np.random.default_rng(0)
    probe = np.concatenate([samples, rng.normal(0, 3, (64, samples.shape[1]))]).astype(np.float32)
    with torch.inference_mode():
        expected = net(torch.from_numpy(probe)).reshape(-1).numpy()
    got = forward(probe)
    return bool(got.shape == expected.shape and np.allclose(got, expected, rtol=TOLERANCE,
                                                            atol=TOLERANCE))
