"""Model architectures shared by trainer and serving: `build_model(arch)` makes the network a
model card's `architecture` describes; every network maps features to one logit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

KINDS = ("logistic", "mlp")


def architecture(kind: str, input_dim: int, hidden: tuple[int, ...] | list[int] = ()) -> dict[
        str, Any]:
    """The canonical architecture dict stored in model cards."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    return {"kind": kind, "input_dim": int(input_dim),
            "hidden": [int(h) for h in hidden] if kind == "mlp" else []}


def build_model(arch: Mapping[str, Any]) -> nn.Module:
    """A fresh network for `arch` = {"kind": "logistic"|"mlp", "input_dim": int, "hidden": [..]}.

    Parameter names are stable (`layers.<i>.weight|bias`) so state dicts from the registry
    load with `strict=True`.
    """
    kind = arch.get("kind")
    input_dim = int(arch.get("input_dim", 0))
    if input_dim < 1:
        raise ValueError(f"architecture needs a positive input_dim, got {arch.get('input_dim')}")
    layers: list[nn.Module] = []
    if kind == "logistic":
        layers.append(nn.Linear(input_dim, 1))
    elif kind == "mlp":
        width = input_dim
        for size in arch.get("hidden") or [32]:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        layers.append(nn.Linear(width, 1))
    else:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    return _Net(nn.Sequential(*layers))


class _Net(nn.Module):
    """A stack of layers returning one logit per row (shape [n])."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape [n]."""
        out: torch.Tensor = self.layers(x)
        return out.squeeze(-1)


def predict_proba(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Probabilities of the positive class, without tracking gradients."""
    with torch.no_grad():
        return torch.sigmoid(model(x))
