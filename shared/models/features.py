"""Feature decoding shared by trainer and serving: a dataset spec plus a centre and scale per
numeric field turn event payloads (dicts) into float32 matrices.

Numeric fields are standardised from the spec's public bounds (`from_spec`, what the trainer
uses: nothing is computed from data, so scaling costs no privacy), or with fitted mean/std
(`fit`, for analysis outside the private path); categories one-hot over the spec's allowed
values, strings hashed into `token_buckets` buckets, bools 0/1, timestamps as epoch seconds; a
missing or unparsable value takes the spec's imputation value (or the centre). The transform
serialises to a plain dict kept in the model card, so serving applies exactly the trainer's
transform without needing the spec.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.datasets.spec import DatasetSpec, FieldSpec, FieldType

FORMAT = 1
Payload = Mapping[str, Any]


@dataclass(frozen=True)
class Column:
    """One payload field's encoding: which kind, its fitted stats and its output width."""

    name: str
    kind: str  # "numeric" | "timestamp" | "bool" | "category" | "hash"
    mean: float = 0.0
    std: float = 1.0
    impute: float | str | bool | None = None
    categories: tuple[str, ...] = ()
    buckets: int = 0

    @property
    def width(self) -> int:
        """Output columns this field takes."""
        if self.kind == "category":
            return len(self.categories)
        if self.kind == "hash":
            return self.buckets
        return 1

    @property
    def fill(self) -> float:
        """What a missing or unparsable numeric, timestamp or bool value becomes."""
        fill = _number(self.impute) if self.impute is not None else self.mean
        return self.mean if fill is None else fill

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "name": self.name, "kind": self.kind, "mean": self.mean, "std": self.std,
            "impute": self.impute, "categories": list(self.categories), "buckets": self.buckets,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Column:
        """Inverse of `to_dict`."""
        return cls(
            name=str(data["name"]), kind=str(data["kind"]), mean=float(data["mean"]),
            std=float(data["std"]), impute=data.get("impute"),
            categories=tuple(str(c) for c in data.get("categories", ())),
            buckets=int(data.get("buckets", 0)),
        )


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _timestamp(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return _number(value)
    return _number(value)


def _boolean(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and value in (0, 1):
        return float(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "y", "t"):
            return 1.0
        if lowered in ("false", "0", "no", "n", "f"):
            return 0.0
    return None


def _fast_numbers(raw: list[Any]) -> npt.NDArray[np.float64] | None:
    """All of `raw` as float64 in one numpy call (None/NaN become NaN), or None when some value
    needs the per-value parser."""
    try:
        return np.array(raw, dtype=np.float64)
    except (ValueError, TypeError):
        return None


def bucket(value: str, buckets: int) -> int:
    """Stable hash bucket of a string token (blake2b, independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def label_value(value: Any) -> float | None:
    """A label as 0.0/1.0 (bools, 0/1 numbers, 'true'/'false' text), None when unusable."""
    return _boolean(value)


def _public_bounds(spec_field: FieldSpec) -> tuple[float, float] | None:
    low = spec_field.clip_min if spec_field.clip_min is not None else spec_field.valid_min
    high = spec_field.clip_max if spec_field.clip_max is not None else spec_field.valid_max
    return None if low is None or high is None else (float(low), float(high))


def _kind(spec_field: FieldSpec) -> str:
    return {
        FieldType.INT: "numeric", FieldType.FLOAT: "numeric", FieldType.TIMESTAMP: "timestamp",
        FieldType.BOOL: "bool", FieldType.CATEGORY: "category", FieldType.STRING: "hash",
    }[spec_field.type]


@dataclass
class FeatureTransform:
    """Payload dicts → float32 matrix, with statistics fitted once and then frozen."""

    dataset: str
    spec_hash: str
    columns: list[Column] = field(default_factory=list)
    label: str | None = None
    sensitive: str | None = None

    @property
    def dim(self) -> int:
        """Width of the output matrix."""
        return sum(c.width for c in self.columns)

    @property
    def feature_names(self) -> list[str]:
        """One name per output column (`field`, `field=category`, `field#bucket`)."""
        names: list[str] = []
        for column in self.columns:
            if column.kind == "category":
                names.extend(f"{column.name}={c}" for c in column.categories)
            elif column.kind == "hash":
                names.extend(f"{column.name}#{b}" for b in range(column.buckets))
            else:
                names.append(column.name)
        return names

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> FeatureTransform:
        """Centre each numeric feature on the spec's imputation value (else the middle of its
        public bounds) and scale by a quarter of the bounds' width (clip, else valid range),
        so the bounds land near ±2; unbounded ones pass unscaled. Nothing is computed from
        data."""
        fitted = cls.fit(spec, [])
        columns = []
        for column in fitted.columns:
            bounds = _public_bounds(spec.field(column.name))
            if column.kind == "numeric" and bounds is not None:
                low, high = bounds
                quarter = max((high - low) / 4, 1e-12)
                declared = spec.field(column.name).impute
                centre = (low + high) / 2
                if declared is not None and (number := _number(declared.value)) is not None:
                    centre = min(max(number, low), high)
                impute = column.impute if declared else centre
                column = Column(column.name, column.kind, mean=centre, std=quarter,
                                impute=impute)
            columns.append(column)
        return cls(fitted.dataset, fitted.spec_hash, columns, fitted.label, fitted.sensitive)

    @classmethod
    def fit(cls, spec: DatasetSpec, payloads: Sequence[Payload]) -> FeatureTransform:
        """Fit mean/std of numeric features on `payloads` (the spec fixes everything else)."""
        columns: list[Column] = []
        for spec_field in spec.features:
            kind = _kind(spec_field)
            impute = spec_field.impute.value if spec_field.impute is not None else None
            if kind in ("numeric", "timestamp"):
                parse = _number if kind == "numeric" else _timestamp
                values = [v for v in (parse(p.get(spec_field.name)) for p in payloads)
                          if v is not None]
                mean = float(np.mean(values)) if values else 0.0
                std = float(np.std(values)) if len(values) > 1 else 1.0
                columns.append(Column(spec_field.name, kind, mean=mean,
                                      std=std if std > 1e-12 else 1.0,
                                      impute=_number(impute) if impute is not None else mean))
            elif kind == "bool":
                columns.append(Column(spec_field.name, kind,
                                      impute=_boolean(impute) if impute is not None else 0.0))
            elif kind == "category":
                columns.append(Column(spec_field.name, kind, categories=spec_field.allowed or (),
                                      impute=None if impute is None else str(impute)))
            else:
                columns.append(Column(spec_field.name, kind, buckets=spec.model.token_buckets,
                                      impute=None if impute is None else str(impute)))
        label = spec.label.name if spec.label is not None else None
        sensitive = spec.sensitive.name if spec.sensitive is not None else None
        return cls(spec.name, spec.spec_hash(), columns, label, sensitive)

    def transform(self, payloads: Sequence[Payload]) -> npt.NDArray[np.float32]:
        """Encode `payloads` as a (len(payloads), dim) float32 matrix."""
        out = np.zeros((len(payloads), self.dim), dtype=np.float32)
        offset = 0
        for column in self.columns:
            raw = [p.get(column.name) for p in payloads]
            if column.kind in ("numeric", "timestamp", "bool"):
                parse = {"numeric": _number, "timestamp": _timestamp, "bool": _boolean}[
                    column.kind]
                fill = column.fill
                values = _fast_numbers(raw) if column.kind == "numeric" else None
                if values is None:
                    values = np.fromiter(
                        (fill if (v := parse(x)) is None else v for x in raw),
                        dtype=np.float64, count=len(raw),
                    )
                else:
                    values[~np.isfinite(values)] = fill
                if column.kind != "bool":
                    values = (values - column.mean) / column.std
                out[:, offset] = values
            elif column.kind == "category":
                index = {c: i for i, c in enumerate(column.categories)}
                for row, value in enumerate(raw):
                    key = column.impute if value is None else str(value)
                    position = index.get(str(key)) if key is not None else None
                    if position is not None:
                        out[row, offset + position] = 1.0
            else:
                for row, value in enumerate(raw):
                    token = column.impute if value is None else str(value)
                    if token is not None:
                        out[row, offset + bucket(str(token), column.buckets)] = 1.0
            offset += column.width
        return out

    def labels(self, payloads: Iterable[Payload]) -> npt.NDArray[np.float32]:
        """Labels as 0/1 float32 (NaN where missing or unusable)."""
        if self.label is None:
            raise ValueError(f"dataset {self.dataset} has no label field")
        name = self.label
        return np.fromiter(
            (math.nan if (v := label_value(p.get(name))) is None else v for p in payloads),
            dtype=np.float32,
        )

    def groups(self, payloads: Iterable[Payload]) -> list[str | None]:
        """The sensitive attribute of each payload as text (None when absent or no attribute)."""
        name = self.sensitive
        return [None if name is None or p.get(name) is None else str(p.get(name))
                for p in payloads]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form stored in the model card."""
        return {
            "format": FORMAT, "dataset": self.dataset, "spec_hash": self.spec_hash,
            "label": self.label, "sensitive": self.sensitive,
            "columns": [c.to_dict() for c in self.columns],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureTransform:
        """Rebuild a transform from `to_dict` output (ValueError when malformed)."""
        try:
            if int(data.get("format", FORMAT)) != FORMAT:
                raise ValueError(f"unsupported feature transform format {data.get('format')}")
            return cls(
                dataset=str(data["dataset"]), spec_hash=str(data["spec_hash"]),
                columns=[Column.from_dict(c) for c in data["columns"]],
                label=data.get("label"), sensitive=data.get("sensitive"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed feature transform: {error!r}") from None
