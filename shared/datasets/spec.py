"""The dataset-spec model (docs/ARCHITECTURE.md, "The envelope"): each field's type, role, cleaning
rules, PII handling and DP bounds, plus the dataset's privacy and model settings."""

from __future__ import annotations

import hashlib
from enum import StrEnum
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class FieldType(StrEnum):
    """Value types a payload field can have."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    CATEGORY = "category"
    TIMESTAMP = "timestamp"


class Role(StrEnum):
    """What a field is for."""

    ID = "id"
    SUBJECT = "subject"
    FEATURE = "feature"
    LABEL = "label"
    PII = "pii"
    SENSITIVE = "sensitive"
    TIMESTAMP = "timestamp"


class PiiAction(StrEnum):
    """How ingest protects a PII field."""

    ENCRYPT = "encrypt"
    TOKENIZE = "tokenize"
    DROP = "drop"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Impute(_Spec):
    """Value used when the field is missing or null."""

    strategy: Literal["constant", "mean", "median", "mode"] = "constant"
    value: str | int | float | bool


class FieldSpec(_Spec):
    """One payload field."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    type: FieldType
    role: Role
    required: bool = True
    description: str = ""
    valid_min: float | None = None
    valid_max: float | None = None
    clip_min: float | None = None
    clip_max: float | None = None
    allowed: tuple[str, ...] | None = None
    max_length: int | None = None
    impute: Impute | None = None
    unit: str | None = None
    unit_factors: dict[str, float] = Field(default_factory=dict)
    pii: PiiAction | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FieldSpec:
        if self.role is Role.PII and self.pii is None:
            raise ValueError(f"field {self.name}: a pii field needs a `pii` action")
        if self.type is FieldType.CATEGORY and not self.allowed:
            raise ValueError(f"field {self.name}: a category field needs `allowed` values")
        for low, high in ((self.valid_min, self.valid_max), (self.clip_min, self.clip_max)):
            if low is not None and high is not None and low > high:
                raise ValueError(f"field {self.name}: min {low} is above max {high}")
        return self

    @property
    def is_numeric(self) -> bool:
        """True for int and float fields."""
        return self.type in (FieldType.INT, FieldType.FLOAT)


class PrivacySpec(_Spec):
    """Differential-privacy settings of a dataset.

    `model` mode (default): governance releases records un-noised inside the trusted boundary,
    bounds each subject to `max_events_per_subject` events per release, and every model
    release is (`epsilon_per_release`, `delta`)-DP per subject by DP-SGD, charged to the
    ledger before it is announced. `local` mode: governance noises every released field
    (`mechanism` for numbers, randomized response for categories, booleans and the label)
    with `epsilon_per_event` in total per event.
    """

    mode: Literal["model", "local"] = "model"
    max_events_per_subject: int = Field(default=1, ge=1, le=1024)
    epsilon_per_release: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    allow_non_private: bool = Field(
        default=False, description="Permit a trainer to release a model without DP-SGD "
        "(the card and the audit log then say so).")
    mechanism: Literal["laplace", "gaussian"] = "laplace"
    epsilon_per_event: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    delta: float = Field(default=1e-5, ge=0, lt=1)
    subject_budget: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    dataset_budget: float = Field(default=1_000_000.0, gt=0, allow_inf_nan=False)
    purpose: str = "model-training"

    @model_validator(mode="after")
    def _delta(self) -> PrivacySpec:
        if self.mode == "model" and not 0 < self.delta < 1:
            raise ValueError("privacy.delta must be in (0, 1) in model mode")
        return self


class ModelSpec(_Spec):
    """Which model the trainer fits for this dataset."""

    kind: Literal["logistic", "mlp"] = "logistic"
    hidden: tuple[int, ...] = (32,)
    learning_rate: float = Field(default=0.05, gt=0)
    dp_learning_rate: float | None = Field(
        default=None, gt=0, description="Adam learning rate under DP-SGD (default: "
        "learning_rate).")
    dp_minibatch: int | None = Field(
        default=None, ge=1, description="Expected Poisson batch under DP-SGD (default: the "
        "trainer's minibatch setting).")
    dp_epochs: int | None = Field(
        default=None, ge=1, description="Passes (in expectation) over a release's rows under "
        "DP-SGD (default: epochs_per_batch).")
    dp_max_grad_norm: float | None = Field(
        default=None, gt=0, description="DP-SGD clip norm (default: the trainer's setting).")
    epochs_per_batch: int = Field(default=1, ge=1)
    average_decay: float = Field(
        default=0.9, ge=0, lt=1, description="Non-private training releases an average of "
        "each round's weights: round t weighs max(1 - average_decay, w_t / (w_1 + ... + w_t)), "
        "w_t = its rows x the rows trained through it (equal rounds: 2/(t+1)); 0: the last "
        "round's weights.")
    token_buckets: int = Field(default=64, ge=2)
    min_auc: float = Field(
        default=0.6, ge=0.5, le=1.0,
        description="Gate floor: a candidate below this held-out ROC-AUC is refused.")
    decision_threshold: float | Literal["tune"] = Field(
        default=0.5,
        description="Score at or above which the label is positive; `tune` picks the "
        "F1-maximising threshold on the held-out rows (for rare positives, e.g. fraud).",
    )

    @field_validator("decision_threshold")
    @classmethod
    def _threshold(cls, value: float | str) -> float | str:
        if isinstance(value, float) and not 0.0 < value < 1.0:
            raise ValueError("must be between 0 and 1, or `tune`")
        return value


class CompressionSpec(_Spec):
    """Compressed variants the trainer writes beside each model release (serving loads the one
    that fits its device): `int8` (dynamic int8, torch.ao, for CPU) and `fp16` (for CUDA)."""

    variants: tuple[Literal["int8", "fp16"], ...] = ("int8", "fp16")
    tolerance: float = Field(
        default=0.01, ge=0, le=1, description="Largest drop of F1 or ROC-AUC on the held-out "
        "window from the full model's; a variant beyond it is refused (not written).")


class TuningSpec(_Spec):
    """The private hyper-parameter search (`lepton tune`): search ranges and the study's total
    privacy budget (every trial's DP-SGD run composes into it)."""

    epsilon: float = Field(
        default=3.0, gt=0, allow_inf_nan=False, description="The whole study's per-subject "
        "ε at the privacy spec's δ (RDP composition of every trial that touched data).")
    metric: Literal["f1", "roc_auc"] = "f1"
    learning_rate: tuple[float, float] = (1e-3, 0.3)
    epochs: tuple[int, int] = (1, 8)
    max_grad_norm: tuple[float, float] = (0.2, 4.0)
    noise_scale: tuple[float, float] = Field(
        default=(1.0, 2.0), description="Noise multiplier as a multiple of the one that spends "
        "an equal share of `epsilon` on every planned trial (≥ 1).")
    hidden: tuple[tuple[int, ...], ...] = Field(
        default=((16,), (32,), (32, 16), (64, 32)), description="Hidden sizes tried (mlp only).")

    @model_validator(mode="after")
    def _ranges(self) -> TuningSpec:
        for name in ("learning_rate", "epochs", "max_grad_norm", "noise_scale"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"tuning.{name}: need 0 < low <= high, got [{low}, {high}]")
        if self.noise_scale[0] < 1:
            raise ValueError("tuning.noise_scale must start at 1 or above")
        return self


class QualitySpec(_Spec):
    """Data-quality expectations of a dataset (services/ingest/README.md, "Data quality")."""

    min_index: float | None = Field(
        default=None, ge=0, le=1, description="Lowest acceptable quality index (1 − mean "
        "per-field error rate) of an ingest window; below it the IngestDataQualityLow alert "
        "fires and the trainer holds (skips and audits) the cycles whose data came from it.")


class DatasetSpec(_Spec):
    """A dataset declared once; it drives every stage."""

    name: str = Field(pattern=r"^[a-z0-9_.-]+$")
    version: int = 1
    description: str = ""
    fields: tuple[FieldSpec, ...]
    privacy: PrivacySpec = PrivacySpec()
    model: ModelSpec = ModelSpec()
    compression: CompressionSpec = CompressionSpec()
    tuning: TuningSpec = TuningSpec()
    quality: QualitySpec = QualitySpec()

    @model_validator(mode="after")
    def _roles(self) -> DatasetSpec:
        names = [f.name for f in self.fields]
        if len(names) != len(set(names)):
            raise ValueError(f"dataset {self.name}: duplicate field names")
        for role in (Role.LABEL, Role.SUBJECT):
            if sum(f.role is role for f in self.fields) > 1:
                raise ValueError(f"dataset {self.name}: more than one {role.value} field")
        if self.label is None:
            raise ValueError(f"dataset {self.name}: needs a label field")
        return self

    def field(self, name: str) -> FieldSpec:
        """The spec of field `name` (KeyError when absent)."""
        for item in self.fields:
            if item.name == name:
                return item
        raise KeyError(name)

    def by_role(self, role: Role) -> list[FieldSpec]:
        """Fields with `role`, in declaration order."""
        return [f for f in self.fields if f.role is role]

    @property
    def features(self) -> list[FieldSpec]:
        """Model input fields."""
        return self.by_role(Role.FEATURE)

    @property
    def label(self) -> FieldSpec | None:
        """The label field."""
        found = self.by_role(Role.LABEL)
        return found[0] if found else None

    @property
    def sensitive(self) -> FieldSpec | None:
        """The sensitive attribute used for fairness, if any."""
        found = self.by_role(Role.SENSITIVE)
        return found[0] if found else None

    @property
    def pii_fields(self) -> list[FieldSpec]:
        """Fields holding personal data."""
        return self.by_role(Role.PII)

    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of this spec (recorded in model cards); the quality
        expectations are operational, not part of what a model was trained on."""
        canonical = orjson.dumps(self.model_dump(mode="json", exclude={"quality"}),
                                 option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()
