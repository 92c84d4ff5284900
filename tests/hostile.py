"""Hostile `audit.requests` values for tests: the issue's poison record and seeded mutations of
a valid decision (wrong types, lists, huge or non-finite ε, path-like ids, deep nesting, junk)."""

from __future__ import annotations

import random
from typing import Any

import orjson

from shared.principals import Principal, canonical_decision

# the poison record (it named the charge kind of the time, since removed)
POISON = b'{"kind":"release_charge","actor":"x","detail":{"dataset":["x"],"epsilon":1}}'

_BASE: dict[str, Any] = {
    "decision_id": "d-1", "kind": "release_charge", "actor": "trainer", "dataset": "tiny",
    "detail": {"release_id": "d-1", "model": "m", "epsilon": 1.0, "delta": 1e-5,
               "accountant": "rdp", "orders": [2.0, 4.0, 8.0], "rdp": [0.1, 0.2, 0.4],
               "noise_multiplier": 1.2, "sample_rate": 0.1, "steps": 100,
               "max_events_per_subject": 1, "subjects_count": 2, "subjects_sha256": "0" * 64},
    "occurred_at": "2026-01-01T00:00:00Z"}
_VALUES: list[Any] = [
    None, True, 0, -1, 1e300, -1e300, 2**63 - 1, "", "..", ".", "../etc", "a/../b", "x" * 5000,
    [], ["x"], {}, {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}, [[[[[[1]]]]]], "1e300",
    "NaN", {"epsilon": 1}, list(range(100)), "\u0000", "🙂"]
_FIELDS = ["decision_id", "kind", "actor", "subject_id", "event_id", "dataset", "detail",
           "occurred_at", "detail.epsilon", "detail.delta", "detail.version", "detail.model",
           "detail.dataset", "detail.rdp", "detail.subjects_count", "key_id", "signature",
           "extra"]
_JUNK = [b"", b"null", b"[]", b"{", b"\xff\xfe", b'"text"', b"1e400", b'{"kind":"x"}' * 3]


def hostile_decisions(count: int, seed: int = 12, signer: Principal | None = None) -> list[bytes]:
    """`count` values governance must refuse (the poison first), deterministic per seed; with
    `signer`, two in three are validly signed so that the parsers behind the signature check
    see them too."""
    rng = random.Random(seed)
    out = [POISON]
    while len(out) < count:
        roll = rng.random()
        if roll < 0.05:
            out.append(rng.choice(_JUNK))
            continue
        obj = orjson.loads(orjson.dumps(_BASE))
        obj["decision_id"] = f"hostile-{len(out)}"
        for _ in range(rng.randint(1, 3)):
            _mutate(obj, rng)
        if _still_valid(obj):
            obj["detail"]["epsilon"] = 1e300
        if signer is not None and rng.random() < 2 / 3:
            obj["key_id"] = signer.key_id
            obj["signature"] = signer.sign(canonical_decision(obj))
        out.append(orjson.dumps(obj))
    return out


def _mutate(obj: dict[str, Any], rng: random.Random) -> None:
    field = rng.choice(_FIELDS)
    value = rng.choice(_VALUES)
    if field.startswith("detail."):
        detail = obj.get("detail")
        if isinstance(detail, dict):
            detail[field.removeprefix("detail.")] = value
    else:
        obj[field] = value


def _still_valid(obj: dict[str, Any]) -> bool:
    """Whether a mutation left a decision that could pass parsing (then made hostile anyway)."""
    detail = obj.get("detail")
    eps = detail.get("epsilon") if isinstance(detail, dict) else None
    return (obj.get("kind") == "release_charge" and isinstance(eps, int | float)
            and not isinstance(eps, bool) and eps < 1e300)
