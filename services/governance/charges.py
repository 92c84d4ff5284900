"""The privacy ledger's values: consumes requested charges (ε, zCDP ρ, subject) and the Lua
script's result strings, produces ChargeResults, dataset budgets and spends, and the effective ε
of a mixed pure-ε and zCDP spend (Bun & Steinke 2016, Prop. 1.3, at the dataset's δ)."""

from __future__ import annotations

import math
from dataclasses import dataclass


class LedgerMissing(RuntimeError):
    """Redis has no ledger state (flushed or new): rebuild it from the charge log first."""


def effective_epsilon(epsilon: float, rho: float, delta: float) -> float:
    """ε of (ε, δ)-DP for a pure-ε spend plus a zCDP spend ρ (inf when ρ > 0 and δ = 0)."""
    if rho <= 0:
        return epsilon
    if delta <= 0:
        return math.inf
    return epsilon + rho + 2 * math.sqrt(rho * math.log(1 / delta))


@dataclass(frozen=True, slots=True)
class Budget:
    """Budgets of one dataset (ε) and the δ used to convert ρ to ε."""

    subject: float
    dataset: float
    delta: float = 0.0


@dataclass(frozen=True, slots=True)
class Charge:
    """A requested charge; `subject` None charges the dataset only."""

    charge_id: str
    subject: str | None
    epsilon: float
    rho: float = 0.0


@dataclass(frozen=True, slots=True)
class ChargeResult:
    """What the ledger did with a charge."""

    charge_id: str
    status: str  # charged | refused | invalid
    replay: bool
    epsilon: float = 0.0
    rho: float = 0.0
    reason: str = ""  # refused/over: subject | dataset; invalid: epsilon

    @property
    def charged(self) -> bool:
        """True when the amount is (or already was) on the ledger."""
        return self.status == "charged"


def parse_result(charge_id: str, raw: bytes | str) -> ChargeResult:
    """The ChargeResult the charge script returned for `charge_id` (`origin|status|...`)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    origin, status, *rest = text.split("|")
    replay = origin == "replay"
    if status == "charged":
        return ChargeResult(charge_id, status, replay, float(rest[0]), float(rest[1]), rest[2])
    return ChargeResult(charge_id, status, replay, reason=rest[0])


@dataclass(frozen=True, slots=True)
class Spend:
    """A dataset's totals."""

    epsilon: float
    rho: float
    charges: int
