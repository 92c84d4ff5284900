"""Randomized response for `local` privacy mode, with OpenDP: a category (over the spec's
allowed values) or a boolean is kept with probability e^ε/(e^ε + m − 1) and otherwise replaced
by one of the other m − 1 values uniformly; ε is what OpenDP's privacy map reports (never
more than the field's share). A missing value is released as missing (only presence leaks,
which the spec's imputation at ingest already fixes for required fields)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from shared.datasets import FieldSpec, FieldType
from shared.events import Change, Scalar

_BOOL_TEXT = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _dp() -> Any:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@dataclass(frozen=True)
class RandomizedField:
    """One category or boolean field released by randomized response."""

    name: str
    categories: tuple[str, ...]
    boolean: bool
    probability: float
    epsilon: float
    measurement: Any
    change: Change

    def apply(self, payload: dict[str, Scalar]) -> bool:
        """Replace the field's value by its randomized release; False when it is missing."""
        value = payload.get(self.name)
        if value is None:
            return False
        if self.boolean:
            truth = value if isinstance(value, bool) else _BOOL_TEXT.get(str(value).lower())
            if truth is None:
                payload.pop(self.name)
                return False
            payload[self.name] = bool(self.measurement(truth))
            return True
        text = str(value)
        if text not in self.categories:
            payload.pop(self.name)
            return False
        payload[self.name] = str(self.measurement(text))
        return True


def randomized_field(spec: FieldSpec, epsilon: float) -> RandomizedField:
    """Calibrate randomized response for `spec` to at most `epsilon`."""
    dp = _dp()
    boolean = spec.type is FieldType.BOOL
    categories = ("false", "true") if boolean else tuple(spec.allowed or ())
    m = len(categories)
    if m < 2:
        raise ValueError(f"field {spec.name}: randomized response needs two or more values")
    # e^ε/(e^ε + m − 1), stable for large ε (capped where keeping would round to certainty)
    probability = 1 / (1 + (m - 1) * math.exp(-min(epsilon, 30.0)))
    while True:
        measurement = (dp.m.make_randomized_response_bool(probability) if boolean
                       else dp.m.make_randomized_response(list(categories), probability))
        cost = float(measurement.map(1))
        if cost <= epsilon:
            break
        probability -= 1e-12 + (probability - 1 / m) * 1e-9
    detail = f"randomized response p_keep={probability:.6g} over {m} values"
    return RandomizedField(spec.name, categories, boolean, probability, cost, measurement,
                           Change(field=spec.name, action="randomized", detail=detail))
