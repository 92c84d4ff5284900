"""FedAvg with client-level clipping and server-side Gaussian noise, and its site-level
accountant.

Flower (flwr) is not a dependency: its current releases pin typer < 0.21, fastapi < 0.139,
rich < 15 and uvicorn < 0.50 below what this project runs, and the newest release that fits
those needs protobuf < 5 and cryptography < 42 (the committed stubs need protobuf ≥ 6.30).
The math is Flower's: FedAvg is its `aggregate` (the average of the updates weighted by sample
count), and the noise is its DifferentialPrivacyServerSideFixedClipping calibration (each
update clipped to norm C, Gaussian noise of standard deviation z·C/m on the average of m
updates), generalised to weighted averages as z·C·max_i(w_i), which is z·C/m for equal weights.

Site-level ε (protecting everything one site contributes, against anyone who sees only the
released model): replacing one site's data moves the weighted sum of clipped updates by at most
2·C·max_i(w_i), so each round is a Gaussian mechanism with noise multiplier z/2; T rounds
compose with the RDP accountant (Opacus's compute_rdp at q = 1: no amplification is claimed
for site selection). It does not protect against the coordinator, which sees each update
(unless secure aggregation is on: secure.py sums masked updates and adds the same noise); the
per-subject guarantee against it is each site's DP-SGD, charged at the site.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from opacus.accountants.analysis.rdp import compute_rdp

from shared.accounting import ORDERS, epsilon_from_rdp

Arrays = dict[str, npt.NDArray[np.float32]]


def norm(update: Arrays) -> float:
    """The L2 norm of an update over all its tensors."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values()))


def clip(update: Arrays, bound: float) -> tuple[Arrays, float]:
    """The update scaled to norm ≤ `bound`, and its norm before clipping."""
    size = norm(update)
    scale = min(1.0, bound / size) if size > 0 else 1.0
    return {k: (v * scale).astype(np.float32) for k, v in update.items()}, size


def fedavg(updates: Sequence[tuple[Arrays, int]], clip_norm: float, noise_multiplier: float,
           rng: np.random.Generator | None = None) -> tuple[Arrays, float]:
    """The sample-weighted average of the clipped updates plus the server's Gaussian noise;
    (average, noise standard deviation)."""
    total = sum(count for _, count in updates)
    if not updates or total <= 0:
        raise ValueError("no updates with samples to average")
    weights = [count / total for _, count in updates]
    clipped = [clip(update, clip_norm)[0] for update, _ in updates]
    names = sorted(clipped[0])
    if any(sorted(update) != names for update in clipped):
        raise ValueError("updates name different tensors")
    average = {name: np.sum([w * u[name].astype(np.float64) for w, u in
                             zip(weights, clipped, strict=True)], axis=0) for name in names}
    return server_noise(average, weights, clip_norm, noise_multiplier, rng)


def server_noise(average: dict[str, npt.NDArray[np.float64]], weights: Sequence[float],
                 clip_norm: float, noise_multiplier: float,
                 rng: np.random.Generator | None = None) -> tuple[Arrays, float]:
    """The weighted average plus Gaussian noise of std z·C·max weight, as float32; (noised
    average, noise standard deviation)."""
    std = noise_multiplier * clip_norm * max(weights)
    if std > 0:
        generator = rng or np.random.default_rng(secrets.randbits(128))
        average = {k: v + generator.normal(0.0, std, v.shape) for k, v in average.items()}
    return {k: v.astype(np.float32) for k, v in average.items()}, std


def site_level_epsilon(noise_multiplier: float, rounds: int, delta: float) -> float | None:
    """ε at δ protecting one site's whole contribution over `rounds` noised rounds (None
    without noise: there is no site-level guarantee)."""
    if noise_multiplier <= 0 or rounds == 0:
        return None
    curve = compute_rdp(q=1.0, noise_multiplier=noise_multiplier / 2, steps=rounds,
                        orders=list(ORDERS))
    return epsilon_from_rdp([float(v) for v in curve], delta)
