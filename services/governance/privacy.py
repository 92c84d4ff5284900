"""How governance releases a dataset's events, by the spec's privacy mode, with OpenDP.

`model` mode (default): records are released un-noised inside the trusted boundary (the
trainer's DP-SGD makes each model release DP); the stamp says so and carries no ε.

`local` mode: every released field is protected, with `epsilon_per_event` split equally over
the k protected fields (basic composition):
- numeric features with bounds (clip_min/clip_max, else valid_min/valid_max) are clipped and
  released through OpenDP's Laplace mechanism (scale width/ε_f) or, with `gaussian`, its
  Gaussian mechanism (the numeric share of ε and δ fix a zCDP budget split over them);
- categories (the sensitive attribute included), booleans and the label through OpenDP's
  randomized response (truth kept with probability e^ε_f/(e^ε_f + m − 1) over m values).
Fields that cannot be protected (unbounded numbers, free strings, ids, PII) are dropped. The
stamp's ε is the sum of the fields' OpenDP privacy maps (the zCDP part converted at δ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.governance.charges import Budget
from services.governance.randomized import randomized_field
from shared.datasets import DatasetSpec, FieldSpec, FieldType, Role
from shared.events import Change, PrivacyStamp, Scalar

GRANULARITY_K = -40  # OpenDP noise lattice 2^-40: exact sampling at a fraction of the cost
_CACHE_LIMIT = 256


class PrivacyConfigError(ValueError):
    """A dataset's privacy settings cannot be honoured."""


@dataclass(frozen=True)
class BoundedFeature:
    """A numeric feature released with noise, and what one release costs."""

    name: str
    lower: float
    upper: float
    impute: float
    scale: float
    epsilon: float
    rho: float
    noised: Change


def _bounds(field: FieldSpec) -> tuple[float, float] | None:
    lower = field.clip_min if field.clip_min is not None else field.valid_min
    upper = field.clip_max if field.clip_max is not None else field.valid_max
    if lower is None or upper is None:
        return None
    return float(lower), float(upper)


def zcdp_rho(epsilon: float, delta: float) -> float:
    """The largest ρ whose zCDP guarantee implies (ε, δ)-DP."""
    log_term = math.log(1 / delta)
    return (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2


def _dp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


class DatasetPrivacy:
    """How events of one dataset are released, and what each release costs."""

    def __init__(self, spec: DatasetSpec, *, enabled: bool = True) -> None:
        privacy = spec.privacy
        self._privacy = privacy
        self.privacy_spec = privacy
        self.dataset = spec.name
        self.mode = privacy.mode
        self.local = privacy.mode == "local"
        self.enabled = enabled if self.local else False
        self.mechanism = privacy.mechanism if self.enabled else "none"
        self.delta = privacy.delta if self.mechanism == "gaussian" else 0.0
        self.budget = Budget(privacy.subject_budget, privacy.dataset_budget, privacy.delta)
        if self.mechanism == "gaussian" and not 0 < privacy.delta < 1:
            raise PrivacyConfigError(f"dataset {spec.name}: the gaussian mechanism needs "
                                     "privacy.delta in (0, 1)")
        numeric = [f for f in spec.features if f.is_numeric]
        bounded = [(f, b) for f in numeric if (b := _bounds(f)) is not None]
        randomized = [f for f in spec.fields if f.type in (FieldType.CATEGORY, FieldType.BOOL)
                      and f.role in (Role.FEATURE, Role.LABEL, Role.SENSITIVE)]
        protected = {f.name for f, _ in bounded} | {f.name for f in randomized}
        self.dropped = [f.name for f in spec.fields if f.name not in protected] \
            if self.enabled else []
        self._cache: dict[tuple[int, int], Callable[[list[float]], list[float]]] = {}
        self._dropped_changes = [Change(field=name, action="dropped",
                                        detail="field cannot be protected in local DP mode")
                                 for name in self.dropped]
        k = len(bounded) + len(randomized)
        self.features = [self._calibrate(f, b, len(bounded), k) for f, b in bounded] \
            if self.enabled else []
        self.randomized = [randomized_field(f, privacy.epsilon_per_event / k)
                           for f in randomized] if self.enabled else []
        self.epsilon = sum(f.epsilon for f in self.features) + sum(
            r.epsilon for r in self.randomized)
        self.rho = sum(f.rho for f in self.features)
        stamp_eps = self.epsilon
        if self.mechanism == "gaussian" and self.rho > 0:
            stamp_eps += self.rho + 2 * math.sqrt(self.rho * math.log(1 / self.delta))
        if not self.local:
            self.stamp = PrivacyStamp(mode="model", mechanism="none", epsilon=None, delta=0.0)
        else:
            self.stamp = PrivacyStamp(mode="local", mechanism=self.mechanism,
                                      epsilon=stamp_eps if self.enabled else None,
                                      delta=self.delta)

    def _calibrate(self, field: FieldSpec, bounds: tuple[float, float], numeric: int,
                   k: int) -> BoundedFeature:
        lower, upper = bounds
        width = upper - lower
        impute = field.impute.value if field.impute is not None else None
        fill = float(impute) if isinstance(impute, int | float) and not isinstance(
            impute, bool) else (lower + upper) / 2
        fill = min(max(fill, lower), upper)
        privacy = self._privacy
        if privacy.mechanism == "laplace":
            target = privacy.epsilon_per_event / k
            scale = width / target if width > 0 else 0.0
        else:
            share = privacy.epsilon_per_event * numeric / k
            target = zcdp_rho(share, privacy.delta) / numeric
            scale = width / math.sqrt(2 * target) if width > 0 else 0.0
        cost = 0.0
        if width > 0:
            scale *= 1 + 1e-9
            cost = self._measure(scale, 1).map(width)
            while cost > target:
                scale *= 1 + 1e-6
                cost = self._measure(scale, 1).map(width)
        eps, rho = (cost, 0.0) if privacy.mechanism == "laplace" else (0.0, cost)
        detail = f"{privacy.mechanism} scale={scale:.6g} bounds=[{lower:g},{upper:g}]"
        return BoundedFeature(field.name, lower, upper, fill, scale, eps, rho,
                              Change(field=field.name, action="noised", detail=detail))

    def _measure(self, scale: float, size: int) -> Any:
        dp = _dp()
        domain = dp.vector_domain(dp.atom_domain(T=float, nan=False), size=size)
        if self.mechanism == "laplace":
            return dp.m.make_laplace(domain, dp.l1_distance(T=float), scale, k=GRANULARITY_K)
        return dp.m.make_gaussian(domain, dp.l2_distance(T=float), scale, k=GRANULARITY_K)

    def _noise(self, index: int, values: list[float]) -> list[float]:
        feature = self.features[index]
        if feature.scale == 0:
            return values
        key = (index, len(values))
        release = self._cache.get(key)
        if release is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            release = self._measure(feature.scale, len(values))
            self._cache[key] = release
        return list(release(values))

    def release(self, payloads: Sequence[dict[str, Scalar]]
                ) -> list[tuple[dict[str, Scalar], list[Change]]]:
        """Local mode: clip and noise bounded numbers (one OpenDP call per feature for the
        batch), randomize categories, booleans and the label, drop the rest. Model mode:
        payloads unchanged. Returns new payloads with the changes made."""
        out = [dict(p) for p in payloads]
        changes: list[list[Change]] = [[] for _ in payloads]
        if not self.enabled or not payloads:
            return list(zip(out, changes, strict=True))
        for index, feature in enumerate(self.features):
            values = []
            for payload, made in zip(out, changes, strict=True):
                raw = payload.get(feature.name)
                if isinstance(raw, int | float) and not isinstance(raw, bool):
                    value = float(raw)
                    if not feature.lower <= value <= feature.upper:
                        value = min(max(value, feature.lower), feature.upper)
                        made.append(Change(field=feature.name, action="clipped"))
                else:
                    value = feature.impute
                    made.append(Change(field=feature.name, action="imputed",
                                       detail="missing before DP release"))
                values.append(value)
            for payload, made, noisy in zip(out, changes, self._noise(index, values),
                                            strict=True):
                payload[feature.name] = noisy
                made.append(feature.noised)
        for rr in self.randomized:
            for payload, made in zip(out, changes, strict=True):
                if rr.apply(payload):
                    made.append(rr.change)
        for payload, made in zip(out, changes, strict=True):
            for name, change in zip(self.dropped, self._dropped_changes, strict=True):
                if payload.pop(name, None) is not None:
                    made.append(change)
        return list(zip(out, changes, strict=True))
