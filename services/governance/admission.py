"""Admission of `audit.requests` records: bytes → a typed, bounded decision, or a refusal.

Consumes the raw record value; produces an `Admitted` decision (the generic `Decision` plus the
typed detail of its kind and the principal that signed it) or a `Refused` (a short code and a
reason that never quotes the input). Every check that can fail is here, before anything touches
the ledger or the audit log: size, JSON, the generic shape, safe ids and names (no `.`/`..`
segments), the signature of an allowed principal over the canonical encoding, the kind allowed
for that principal, the kind's own model with bounds (ε finite and ≤ the configured maximum),
and a known dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from shared.allowlist import Allowed, AllowList
from shared.events import Decision, EnvelopeError, first_error
from shared.principals import verify_decision

MAX_DECISION_BYTES = 64 * 1024
MAX_DETAIL_BYTES = 16 * 1024
MAX_DEPTH = 4
MAX_ITEMS = 64
MAX_TEXT = 500

SafeName = Annotated[str, StringConstraints(
    min_length=1, max_length=100, pattern=r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")]
SafeId = Annotated[str, StringConstraints(
    min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_:@+=-]+(?:[./][A-Za-z0-9_:@+=-]+)*$")]
Actor = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[ -~]+$")]

# codes (the audit record's reason; the DLQ detail starts with it)
INVALID = "invalid_decision"
TOO_LARGE = "decision_too_large"
UNKNOWN_KIND = "unknown_kind"
UNKNOWN_DATASET = "unknown_dataset"
EPSILON_OVER_MAX = "epsilon_over_max"
UNSIGNED = "unsigned"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
KIND_NOT_ALLOWED = "kind_not_allowed"
CODES = frozenset({INVALID, TOO_LARGE, UNKNOWN_KIND, UNKNOWN_DATASET, EPSILON_OVER_MAX, UNSIGNED,
                   UNKNOWN_KEY, BAD_SIGNATURE, KIND_NOT_ALLOWED})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Ids(_Strict):
    """The generic decision's ids, re-checked against the safe patterns."""

    decision_id: SafeId
    actor: Actor
    subject_id: SafeId | None = None
    event_id: SafeId | None = None
    dataset: SafeName | None = None


class ReleaseChargeDetail(_Strict):
    """`release_charge`: a model release's per-subject RDP curve; the contributing subjects'
    ids travel out of band (shared/releases.py) and are bound by count and sha256 here."""

    release_id: SafeId
    model: SafeName
    epsilon: float = Field(ge=0, allow_inf_nan=False)
    delta: float = Field(gt=0, lt=1, allow_inf_nan=False)
    accountant: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]
    orders: list[float] = Field(min_length=1, max_length=MAX_ITEMS)
    rdp: list[float | None] = Field(min_length=1, max_length=MAX_ITEMS)
    noise_multiplier: float = Field(gt=0, allow_inf_nan=False)
    sample_rate: float = Field(gt=0, le=1, allow_inf_nan=False)
    steps: int = Field(ge=1, le=10**9)
    max_events_per_subject: int = Field(ge=1, le=1024)
    group_privacy: Annotated[str, StringConstraints(max_length=MAX_TEXT)] = ""
    subjects_count: int = Field(ge=1, le=10**7)
    subjects_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ConsentDetail(_Strict):
    """`consent_changed`: the new state and the purpose it applies to."""

    consent: Literal["given", "withdrawn"]
    purpose: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT)]


class ModelDetail(BaseModel):
    """`model_*`: which version (other bounded fields such as metrics may follow)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    model: SafeName | None = None
    version: int | None = Field(default=None, ge=1, le=10**9)


class DriftFeature(_Strict):
    """One drifted feature (or the score) of a `drift_detected` window."""

    feature: SafeName
    test: Literal["ks", "chi2", "wasserstein", "jensenshannon"]
    statistic: float = Field(ge=0, allow_inf_nan=False)
    threshold: float = Field(ge=0, allow_inf_nan=False)
    p_value: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)


class DriftDetail(_Strict):
    """`drift_detected`: a monitored window of a model version drifted from the card's
    reference on these features."""

    model: SafeName
    version: int = Field(ge=1, le=10**9)
    window: int = Field(ge=1, le=10**7)
    alpha: float = Field(gt=0, lt=1, allow_inf_nan=False)
    features: list[DriftFeature] = Field(min_length=1, max_length=MAX_ITEMS)
    retrain: bool


class QualityDetail(_Strict):
    """`quality_degraded`: a version's live F1 on joined labels fell below its offline F1."""

    model: SafeName
    version: int = Field(ge=1, le=10**9)
    labelled: int = Field(ge=1, le=10**9)
    live_f1: float = Field(ge=0, le=1, allow_inf_nan=False)
    offline_f1: float = Field(ge=0, le=1, allow_inf_nan=False)
    live_roc_auc: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    f1_drop: float = Field(ge=0, le=1, allow_inf_nan=False)
    retrain: bool


Instant = Annotated[str, StringConstraints(
    min_length=20, max_length=40, pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z$")]


class HeldDetail(_Strict):
    """`training_held`: a trainer skipped a cycle because the quality index of the ingest
    windows its data came from was below the spec's `quality.min_index`."""

    reason: Literal["quality_below_min_index"]
    model: SafeName
    index: float = Field(ge=0, le=1, allow_inf_nan=False)
    sum_error_rate: float = Field(ge=0, le=10_000, allow_inf_nan=False)
    min_index: float = Field(ge=0, le=1, allow_inf_nan=False)
    events: int = Field(ge=1, le=10**12)
    window_start: Instant
    window_end: Instant
    windows: int = Field(ge=1, le=10**6)
    replicas: int = Field(ge=1, le=10**4)
    basis: Literal["overlap", "latest"]
    rows: int = Field(ge=0, le=10**12)


_MODEL = frozenset({"model_promoted", "model_refused", "model_rolled_back"})
ALLOWED: dict[str, frozenset[str]] = {
    "ingest": frozenset({"subject_forgotten", "key_rotated"}),
    "trainer": _MODEL | {"release_charge", "training_held"},
    "serving": _MODEL,
    "monitor": frozenset({"drift_detected", "quality_degraded"}),
    "federation": _MODEL,
    "operator": frozenset({"consent_changed", "subject_forgotten", "key_rotated", "key_retired",
                           "model_promoted", "model_rolled_back"}),
}


@dataclass(frozen=True, slots=True)
class KindRule:
    """What a kind needs: top-level fields that must be present and its detail model."""

    requires: tuple[str, ...] = ()
    detail: type[BaseModel] | None = None


KINDS: dict[str, KindRule] = {
    "release_charge": KindRule(("dataset",), ReleaseChargeDetail),
    "consent_changed": KindRule(("subject_id", "dataset"), ConsentDetail),
    "subject_forgotten": KindRule(("subject_id",)),
    "key_rotated": KindRule(),
    "key_retired": KindRule(),
    "model_promoted": KindRule(("dataset",), ModelDetail),
    "model_rolled_back": KindRule(("dataset",), ModelDetail),
    "model_refused": KindRule((), ModelDetail),
    "drift_detected": KindRule(("dataset",), DriftDetail),
    "quality_degraded": KindRule(("dataset",), QualityDetail),
    "training_held": KindRule(("dataset",), HeldDetail),
}


@dataclass(frozen=True, slots=True)
class Admitted:
    """A decision that passed every check."""

    decision: Decision
    detail: BaseModel | None
    principal: Allowed


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a record is not a decision governance will seal as such."""

    code: str
    reason: str

    def text(self) -> str:
        """`code: reason`, for the DLQ detail header."""
        return f"{self.code}: {self.reason}"[:1000]


KnownDataset = Callable[[str], bool]


def admit(value: bytes, known_dataset: KnownDataset, max_epsilon: float,
          allow: AllowList) -> Admitted | Refused:
    """Parse, authenticate and bound-check one `audit.requests` value."""
    if len(value) > MAX_DECISION_BYTES:
        return Refused(TOO_LARGE, f"{len(value)} bytes, over {MAX_DECISION_BYTES}")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError:
        return Refused(INVALID, "not valid JSON")
    if not isinstance(raw, dict):
        return Refused(INVALID, "top level must be a JSON object")
    try:
        decision = Decision.model_validate(raw)
        _Ids.model_validate({k: getattr(decision, k) for k in _Ids.model_fields})
    except ValidationError as error:
        return Refused(INVALID, _why(error))
    if decision.key_id is None or decision.signature is None:
        return Refused(UNSIGNED, "no key_id and signature")
    principal = allow.lookup(decision.key_id)
    if principal is None:
        return Refused(UNKNOWN_KEY, "key_id is not an allowed principal's key")
    if not verify_decision(principal.public, raw):
        return Refused(BAD_SIGNATURE, f"signature does not verify under {principal.name}'s key")
    rule = KINDS.get(decision.kind)
    if rule is None:
        return Refused(UNKNOWN_KIND, "kind is not a known decision kind")
    if decision.kind not in principal.kinds:
        return Refused(KIND_NOT_ALLOWED, f"{principal.name} may not emit {decision.kind}")
    for name in rule.requires:
        if getattr(decision, name) is None:
            return Refused(INVALID, f"{name}: required for {decision.kind}")
    bound = _bounded(raw.get("detail"), 0)
    if bound is not None:
        return Refused(INVALID, f"detail: {bound}")
    if len(orjson.dumps(decision.detail)) > MAX_DETAIL_BYTES:
        return Refused(TOO_LARGE, f"detail over {MAX_DETAIL_BYTES} bytes")
    detail = None
    if rule.detail is not None:
        try:
            detail = rule.detail.model_validate(decision.detail)
        except ValidationError as error:
            return Refused(INVALID, f"detail.{_why(error)}")
    if isinstance(detail, ReleaseChargeDetail) and detail.epsilon > max_epsilon:
        return Refused(EPSILON_OVER_MAX, f"detail.epsilon: over the maximum {max_epsilon:g}")
    if decision.dataset is not None and not known_dataset(decision.dataset):
        return Refused(UNKNOWN_DATASET, "dataset: not a governed dataset")
    return Admitted(decision, detail, principal)


def _why(error: ValidationError) -> str:
    found: EnvelopeError = first_error(error)
    return f"{found.field}: {found.reason}" if found.field else found.reason


def _bounded(value: Any, depth: int) -> str | None:
    """Why a JSON value is outside the detail bounds (None when inside them)."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH}"
    if isinstance(value, str):
        return f"text over {MAX_TEXT} characters" if len(value) > MAX_TEXT else None
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            return f"more than {MAX_ITEMS} keys"
        for key, item in value.items():
            if len(key) > 100:
                return "key over 100 characters"
            if (why := _bounded(item, depth + 1)) is not None:
                return why
        return None
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            return f"more than {MAX_ITEMS} items"
        for item in value:
            if (why := _bounded(item, depth + 1)) is not None:
                return why
    return None
