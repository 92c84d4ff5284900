"""Rényi-DP accounting shared by the trainer (which computes a release's curve) and governance
(which composes each subject's releases): the fixed grid of RDP orders the ledger keeps, and
the RDP → (ε, δ) conversion.

The conversion is the one Opacus's `get_privacy_spent` uses (Balle et al. 2020, Thm. 21):
ε = min over α of rdp(α) − (ln δ + ln α)/(α − 1) + ln((α − 1)/α). RDP composes by adding
curves order by order, so a subject's bound over several releases is the conversion of the sum
of the curves of the releases it took part in (never a plain sum of ε).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ACCOUNTANT = "rdp"
# Opacus's RDPAccountant.DEFAULT_ALPHAS thinned (plus 80-256 for group privacy), small enough
# to keep one curve per subject
ORDERS: tuple[float, ...] = (
    1.1, 1.2, 1.3, 1.5, 1.7, 2.0, 2.3, 2.6, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0,
    12.0, 14.0, 16.0, 20.0, 24.0, 28.0, 32.0, 40.0, 48.0, 56.0, 63.0, 80.0, 128.0, 256.0)


def epsilon_from_rdp(rdp: Sequence[float], delta: float,
                     orders: Sequence[float] = ORDERS) -> float:
    """The smallest ε such that the RDP curve `rdp` (at `orders`) implies (ε, δ)-DP."""
    if len(rdp) != len(orders):
        raise ValueError(f"{len(rdp)} RDP values for {len(orders)} orders")
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    best = math.inf
    for alpha, value in zip(orders, rdp, strict=True):
        if not math.isfinite(value):
            continue
        eps = value - (math.log(delta) + math.log(alpha)) / (alpha - 1) + math.log(
            (alpha - 1) / alpha)
        best = min(best, eps)
    return max(best, 0.0)


def compose(*curves: Sequence[float]) -> list[float]:
    """The RDP curve of running every mechanism whose curve is given (order-wise sum)."""
    total = [0.0] * len(ORDERS)
    for curve in curves:
        if len(curve) != len(total):
            raise ValueError("curves on different order grids")
        total = [a + b for a, b in zip(total, curve, strict=True)]
    return total


def group_exponent(events_per_subject: int) -> int:
    """c such that 2^c ≥ k: group privacy for k events per subject costs 3^c at order α/2^c."""
    return max(0, math.ceil(math.log2(events_per_subject))) if events_per_subject > 1 else 0
