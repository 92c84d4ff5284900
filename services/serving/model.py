"""A verified, warmed-up model version in memory, and the loader that makes one from the
registry: signature and sha256 checked by `shared.models.registry.Registry.load`, the trainer's
FeatureTransform and network rebuilt from the signed model card, then a warm-up pass, then the
signed compressed variant the settings ask for (variants.py) in place of the full network when
it fits this device."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import SpanContext
from scipy.special import expit

from services.serving.encoding import Encoder, compile_rows, matches
from services.serving.errors import Refused
from services.serving.fastpath import Forward, compile_numpy, verified
from services.serving.inputs import RecordSchema
from services.serving.variants import use_variant
from shared.datasets import DatasetSpec, FieldType, Role, load_spec
from shared.events import Scalar

if TYPE_CHECKING:
    import torch

    from shared.models.features import FeatureTransform
    from shared.models.registry import ModelCard, Registry

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    """One model version ready to score; compared and hashed by identity."""

    name: str
    version: int
    card: ModelCard
    transform: FeatureTransform
    net: torch.nn.Module
    schema: RecordSchema
    fast: Forward | None = field(default=None, repr=False)
    encode: Encoder | None = field(default=None, repr=False)
    origin: SpanContext | None = field(default=None, repr=False)
    variant: str = "full"
    runner: torch.nn.Module | None = field(default=None, repr=False)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)  # per-version answers parts
    _inflight: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def score(self, records: list[dict[str, Scalar]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Probabilities of the positive class for cleaned records."""
        matrix = self.encode(records) if self.encode is not None else None
        if matrix is None:
            matrix = self.transform.transform(records)
        if self.fast is not None:
            return expit(self.fast(matrix)).astype(np.float64)  # type: ignore[no-any-return]
        import torch

        from shared.models.variants import logits

        rows = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
        probs = torch.sigmoid(logits(self.runner or self.net, rows)).reshape(-1)
        return probs.numpy().astype(np.float64)

    def remember(self, key: Any, value: Any) -> None:
        """Keep `value` in `memo` (a few hundred entries at most: keys may vary per call)."""
        if len(self.memo) >= 256:
            self.memo.clear()
        self.memo[key] = value

    def acquire(self, n: int = 1) -> None:
        """Count `n` requests in flight on this version."""
        with self._lock:
            self._inflight += n

    def release(self, n: int = 1) -> None:
        """Finish `n` in-flight requests."""
        with self._lock:
            self._inflight -= n

    @property
    def inflight(self) -> int:
        """Requests now being scored by this version."""
        return self._inflight


def warmup_records(spec: DatasetSpec, rows: int) -> list[dict[str, Scalar]]:
    """Synthetic valid records (imputed or mid-range values) to exercise a model once."""
    records: list[dict[str, Scalar]] = []
    for i in range(rows):
        record: dict[str, Scalar] = {}
        for item in spec.fields:
            if item.role is not Role.FEATURE:
                continue
            if item.allowed:
                record[item.name] = item.allowed[i % len(item.allowed)]
            elif item.type is FieldType.BOOL:
                record[item.name] = i % 2 == 0
            elif item.is_numeric:
                low = item.clip_min if item.clip_min is not None else item.valid_min or 0.0
                high = item.clip_max if item.clip_max is not None else item.valid_max
                high = low + 1.0 if high is None else high
                value = low + (high - low) * (i + 1) / (rows + 1)
                record[item.name] = round(value) if item.type is FieldType.INT else value
            else:
                record[item.name] = f"warmup-{i}"
        records.append(record)
    return records


class ModelLoader:
    """Loads model versions from the registry, verifying and warming each before use."""

    def __init__(
        self,
        registry: Registry,
        *,
        warmup_rows: int = 16,
        spec_dir: Path | None = None,
        numpy_forward: bool = True,
        variant: str = "full",
    ) -> None:
        self.registry = registry
        self.warmup_rows = warmup_rows
        self.spec_dir = spec_dir
        self.numpy_forward = numpy_forward
        self.variant = variant

    def load(self, name: str, version: int) -> LoadedModel:
        """Load, verify and warm up `name` v`version`; raise Refused with the reason."""
        from shared.models.clearance import privacy_refusal
        from shared.models.features import FeatureTransform
        from shared.models.nets import build_model
        from shared.models.registry import ArtifactError

        try:
            card, state = self.registry.load(name, version, self.registry.public_key())
        except ArtifactError as error:
            raise Refused(f"{name} v{version}: {error}") from None
        refusal = privacy_refusal(card)
        if refusal is not None:
            raise Refused(f"{name} v{version}: {refusal}")
        try:
            spec = load_spec(card.dataset, self.spec_dir)
            transform = FeatureTransform.from_dict(card.feature_transform)
            net = build_model(card.architecture)
            net.load_state_dict(state, strict=True)
            net.eval()
        except Exception as error:
            raise Refused(f"{name} v{version} cannot be built: {error}") from None
        origin = trace.get_current_span().get_span_context()
        model = LoadedModel(name, version, card, transform, net,
                            RecordSchema(spec),
                            origin=origin if origin.is_valid else None)
        self._encoder(model, spec)
        self._warm_up(model, spec)
        if self.numpy_forward:
            self._compile(model, spec)
        if self.variant != "full":
            samples = model.transform.transform(
                [model.schema.clean(r) for r in warmup_records(spec, self.warmup_rows)])
            use_variant(self.registry, model, self.variant, samples)
            self._warm_up(model, spec)
        return model

    def _encoder(self, model: LoadedModel, spec: DatasetSpec) -> None:
        encode = compile_rows(model.transform)
        if encode is None:
            return
        records = [model.schema.clean(r) for r in warmup_records(spec, self.warmup_rows)]
        sparse = [{k: v for j, (k, v) in enumerate(r.items()) if (i + j) % 3} for i, r in
                  enumerate(records)]  # missing values take the imputation path
        if matches(model.transform, encode, records + sparse):
            model.encode = encode
        else:
            log.warning("%s v%d: the row encoder does not match the transform; not used",
                        model.name, model.version)

    def _compile(self, model: LoadedModel, spec: DatasetSpec) -> None:
        forward = compile_numpy(model.net)
        if forward is None:
            return
        samples = model.transform.transform(
            [model.schema.clean(r) for r in warmup_records(spec, self.warmup_rows)])
        if verified(model.net, forward, samples):
            model.fast = forward
        else:
            log.warning("%s v%d: NumPy forward does not match torch; using torch", model.name,
                        model.version)

    def registry_models(self) -> list[str]:
        """Every model name in the registry."""
        return self.registry.models()

    def _warm_up(self, model: LoadedModel, spec: DatasetSpec) -> None:
        records = [model.schema.clean(r) for r in warmup_records(spec, self.warmup_rows)]
        try:
            scores = model.score(records)
        except Exception as error:
            raise Refused(f"{model.name} v{model.version} failed warm-up: {error}") from None
        if scores.shape != (len(records),) or not np.isfinite(scores).all():
            raise Refused(f"{model.name} v{model.version} warm-up gave invalid scores")
        model.score(records[:1])
