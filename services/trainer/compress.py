"""Compressed variants at release (rank 0): for each variant the spec names (`compression`:
int8 for CPU, fp16 for CUDA; shared/models/variants.py), compress the candidate, score it on the
same held-out window and threshold as the full model, and gate it: a variant whose F1 or ROC-AUC
drops more than `compression.tolerance` below the full model's is refused (its card entry says
why; no file is written). Each entry also records the largest score difference from the full
model on the window and the measured latency of a 32-row batch in the arithmetic serving uses
(int8: NumPy, shared/models/variants.py; fp16: torch on CUDA when present) beside the full
model's (torch); the registry adds sizes and sha256s, so the card's signature covers every
variant.

Consumes the candidate (architecture, state, transform), the held-out window, its labels, the
threshold and the full model's metrics; produces the card's `variants` object and the accepted
variants' tensors.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from scipy.special import expit
from torch import nn

from services.trainer.evaluate import quality
from shared.datasets.spec import CompressionSpec
from shared.models.variants import build_variant, compress, int8_forward, logits

Matrix = npt.NDArray[np.float32]
Scorer = Callable[[Matrix], Matrix]
GATED = ("f1", "roc_auc")
LATENCY_ROWS = 32
LATENCY_RUNS = 200


def measure_latency(forward: Callable[[], object], runs: int = LATENCY_RUNS) -> dict[str, float]:
    """p50/p99 wall time of `forward` in µs (after a warm-up), and µs per row."""
    for _ in range(10):
        forward()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        forward()
        times.append((time.perf_counter() - began) * 1e6)
    p50, p99 = (float(v) for v in np.percentile(times, [50, 99]))
    return {"batch": LATENCY_ROWS, "p50_us": round(p50, 2), "p99_us": round(p99, 2),
            "us_per_row": round(p50 / LATENCY_ROWS, 3)}


def variant_gate(full: Mapping[str, float], variant: Mapping[str, float], tolerance: float
                 ) -> list[str]:
    """Why a variant is refused: a gated metric more than `tolerance` below the full model's."""
    reasons = []
    for name in GATED:
        if name in full and (name not in variant or variant[name] < full[name] - tolerance):
            shown = f"{variant[name]:.4f}" if name in variant else "undefined"
            reasons.append(f"{name} {shown} is below the full model's {full[name]:.4f} by "
                           f"more than {tolerance}")
    return reasons


def _probe(x: Matrix) -> Matrix:
    rows = x[:LATENCY_ROWS] if len(x) else np.zeros((1, x.shape[1]), dtype=np.float32)
    reps = -(-LATENCY_ROWS // len(rows))
    return np.ascontiguousarray(np.tile(rows, (reps, 1))[:LATENCY_ROWS])


def _torch_scorer(net: nn.Module) -> Scorer:
    def score(x: Matrix) -> Matrix:
        return logits(net, torch.from_numpy(x)).numpy()
    return score


def _scorer(name: str, architecture: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
            cuda: torch.device | None) -> tuple[Scorer, str, str]:
    """How a variant computes logits (the arithmetic serving uses), its engine and device."""
    if name == "int8":
        return int8_forward(architecture, tensors), "numpy", "cpu"
    net = build_variant(name, architecture, tensors, cuda)
    return _torch_scorer(net), "torch", "cuda" if cuda is not None else "cpu"


DTYPES = {"int8": "int8 weights (torch.ao quantize_dynamic), uint8 activations quantized per "
                  "row at run time",
          "fp16": "float16 (computed in float32 on CPU)"}


def compress_release(spec: CompressionSpec, architecture: Mapping[str, Any],
                     state: Mapping[str, torch.Tensor], full_net: nn.Module, x: Matrix,
                     labels: npt.NDArray[np.float64], threshold: float,
                     full_metrics: Mapping[str, float]
                     ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """The card's `variants` object and the accepted variants' tensors."""
    if not spec.variants:
        return {}, {}
    probe = _probe(x)
    rows = np.ascontiguousarray(x, dtype=np.float32)
    full = _torch_scorer(full_net.to("cpu").eval())
    full_probs = expit(full(rows).astype(np.float64))
    entries: dict[str, Any] = {"full": {"dtype": "float32", "latency": {
        "engine": "torch", "device": "cpu", **measure_latency(partial(full, probe))}}}
    accepted: dict[str, dict[str, torch.Tensor]] = {}
    cuda = torch.device("cuda") if torch.cuda.is_available() else None
    for name in spec.variants:
        tensors = compress(name, architecture, state)
        score, engine, device = _scorer(name, architecture, tensors, cuda)
        probs = expit(score(rows).astype(np.float64))
        metrics = quality(probs, labels, threshold)
        reasons = variant_gate(full_metrics, metrics, spec.tolerance)
        diff = np.abs(probs - full_probs)
        entries[name] = {
            "dtype": DTYPES[name], "tolerance": spec.tolerance,
            "status": "refused" if reasons else "accepted", "reasons": reasons,
            "metrics": {k: metrics[k] for k in (*GATED, "accuracy", "brier") if k in metrics},
            "score_diff": {"max": float(diff.max(initial=0.0)),
                           "p99": float(np.percentile(diff, 99)) if len(diff) else 0.0,
                           "rows": len(diff)},
            "latency": {"engine": engine, "device": device,
                        **measure_latency(partial(score, probe))},
        }
        if not reasons:
            accepted[name] = tensors
    return entries, accepted
