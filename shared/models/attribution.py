"""Feature attributions of the platform's networks, shared by serving (per-prediction
explanations) and the trainer (global feature importance in the model card). Consumes a
network (shared.models.nets) and the FeatureTransform's float matrix; produces per-column and
per-raw-field attributions relative to one stated baseline, the all-zero standardised vector.

- logistic: exact, attribution = weight x standardised value;
- MLP (Linear/ReLU stacks): Integrated Gradients (captum) in float64, computed exactly: the
  straight path from the baseline is split where any ReLU changes state, so the gradient is
  constant on each piece and midpoint steps inside a piece give its exact integral;
- any other network: captum IG with more Riemann steps until the completeness gap is below
  TOLERANCE (or the last step count).
So sum(attributions) = logit - baseline_logit (to float64 rounding for the first two)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from shared.models.features import FeatureTransform

BASELINE = ("all-zero standardised feature vector: numeric fields at the transform's centre "
            "(the spec's imputation value, else the middle of the public bounds; never a "
            "statistic of the data), no category, no hash bucket, booleans false")
TOLERANCE = 1e-5
STEPS = (64, 256, 1024)
Matrix = npt.NDArray[np.float64]


def double_copy(net: Any) -> Any:
    """A float64 copy of `net` in eval mode (attributions are computed in float64)."""
    return copy.deepcopy(net).double().eval()


def linear_weights(net: Any) -> tuple[Matrix, float] | None:
    """(weights, bias) when `net` is a single Linear layer (a logistic model), else None."""
    from torch import nn

    layers = [m for m in net.modules() if not list(m.children())]
    if len(layers) == 1 and isinstance(layers[0], nn.Linear):
        weight = layers[0].weight.detach().double().numpy().reshape(-1)
        bias = 0.0 if layers[0].bias is None else float(layers[0].bias.detach().double())
        return weight, bias
    return None


def column_attributions(net: Any, matrix: npt.NDArray[Any], double_net: Any = None
                        ) -> tuple[str, Matrix, Matrix, float]:
    """(method, attributions [n, dim], logits [n], baseline logit) for a feature matrix."""
    x = np.asarray(matrix, dtype=np.float64)
    linear = linear_weights(net)
    if linear is not None:
        weight, bias = linear
        attributions = x * weight
        return "exact-linear", attributions, attributions.sum(axis=1) + bias, bias
    import torch
    from captum.attr import IntegratedGradients

    net64 = double_net if double_net is not None else double_copy(net)
    inputs = torch.from_numpy(x)
    baseline = torch.zeros_like(inputs)
    with torch.no_grad():
        logits = net64(inputs).reshape(-1).numpy()
        baseline_logit = float(net64(baseline[:1]).reshape(-1)[0])
    ig = IntegratedGradients(net64)
    layers = _relu_stack(net64)
    if layers is not None:
        return "integrated-gradients", _exact_ig(ig, layers, x), logits, baseline_logit
    attributions = np.zeros_like(x)
    for steps in STEPS:
        result, delta = ig.attribute(inputs, baselines=baseline, n_steps=steps,
                                     method="riemann_trapezoid", return_convergence_delta=True)
        attributions = result.detach().numpy()
        if float(delta.abs().max()) < TOLERANCE:
            break
    return "integrated-gradients", attributions, logits, baseline_logit


def _relu_stack(net: Any) -> list[tuple[Matrix, Matrix] | None] | None:
    """[(W, b) for Linear, None for ReLU] when `net` is a plain Linear/ReLU stack."""
    from torch import nn

    out: list[tuple[Matrix, Matrix] | None] = []
    for module in net.modules():
        if list(module.children()):
            if not isinstance(module, nn.Sequential) and module is not net and \
                    not isinstance(module, type(net)):
                return None
            continue
        if isinstance(module, nn.Linear):
            bias = module.bias.detach().numpy() if module.bias is not None else \
                np.zeros(module.out_features)
            out.append((module.weight.detach().numpy(), bias))
        elif isinstance(module, nn.ReLU):
            out.append(None)
        elif not isinstance(module, nn.Identity):
            return None
    return out


def _pieces(layers: list[tuple[Matrix, Matrix] | None], x: Matrix) -> Matrix:
    """Sorted t in [0, 1] where some ReLU on the path t * x changes state (with 0 and 1)."""
    ts = np.array([0.0, 1.0])
    values = np.stack([np.zeros_like(x), x])  # activations at each t; linear in between
    for layer in layers:
        if layer is not None:
            weight, bias = layer
            values = values @ weight.T + bias
            continue
        a, b = values[:-1], values[1:]
        cross = (a * b) < 0
        new_t, new_v = [], []
        for k, j in zip(*np.nonzero(cross), strict=True):
            share = a[k, j] / (a[k, j] - b[k, j])
            new_t.append(ts[k] + (ts[k + 1] - ts[k]) * share)
            new_v.append(a[k] + (b[k] - a[k]) * share)
        if new_t:
            ts = np.concatenate([ts, new_t])
            values = np.concatenate([values, np.stack(new_v)])
            order = np.argsort(ts, kind="stable")
            ts, values = ts[order], values[order]
        values = np.maximum(values, 0.0)
    return np.unique(ts)


def _exact_ig(ig: Any, layers: list[tuple[Matrix, Matrix] | None], x: Matrix) -> Matrix:
    """Integrated Gradients from 0 to each row of x: two midpoint steps inside each linear
    piece, where the gradient is constant, so the integral is exact."""
    import torch

    starts, ends, owner = [], [], []
    for row, point in enumerate(x):
        ts = _pieces(layers, point)
        starts.append(np.outer(ts[:-1], point))
        ends.append(np.outer(ts[1:], point))
        owner.extend([row] * (len(ts) - 1))
    pieces = ig.attribute(torch.from_numpy(np.concatenate(ends)),
                          baselines=torch.from_numpy(np.concatenate(starts)), n_steps=2,
                          method="riemann_middle").detach().numpy()
    out = np.zeros_like(x)
    np.add.at(out, np.asarray(owner, dtype=np.int64), pieces)
    return out


def by_field(transform: FeatureTransform, per_column: Matrix) -> tuple[list[str], Matrix]:
    """Raw field names and attributions summed over each field's output columns."""
    names: list[str] = []
    owner: list[int] = []
    for column in transform.columns:
        names.append(column.name)
        owner.extend([len(names) - 1] * column.width)
    per_field = np.zeros((per_column.shape[0], len(names)))
    np.add.at(per_field.T, np.asarray(owner, dtype=np.int64), per_column.T)
    return names, per_field


def global_importance(net: Any, transform: FeatureTransform,
                      matrix: npt.NDArray[Any]) -> dict[str, Any]:
    """Mean |attribution| per raw field over `matrix` rows, with the method and baseline."""
    if len(matrix) == 0:
        return {}
    method, per_column, _, _ = column_attributions(net, matrix)
    names, per_field = by_field(transform, per_column)
    means = np.abs(per_field).mean(axis=0)
    return {"method": method, "baseline": BASELINE, "rows": len(matrix),
            "mean_abs_attribution": {n: round(float(v), 6) for n, v in zip(names, means,
                                                                             strict=True)}}
