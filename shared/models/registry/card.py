"""The model card and the registry's file names: consumes a version's metadata (and its signature
fields), produces the canonical bytes the signature covers and the `models.updates`
announcement; ArtifactError names a missing, corrupt or badly signed artifact."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.events import ModelAnnouncement

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
FLAGS_FILE = "flags.json"  # unsigned operator marks beside the signed card
LIVE_FILE = "live.json"  # the durable copy of the live pointer and rollback history
SIGNING_KEY = "model-signing.key"
PUBLIC_KEY = "model-signing.pub"


def variant_file(variant: str) -> str:
    """The registry file name of a compressed variant's weights."""
    if not variant.isalnum() or not variant.islower():
        raise ValueError(f"bad variant name {variant!r}")
    return f"model-{variant}.safetensors"


class ArtifactError(RuntimeError):
    """A model artifact is missing, corrupt, unsigned or badly signed."""


class ModelCard(BaseModel):
    """Everything known about one model version; signed together with its weights' sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = Field(pattern=r"^[a-z0-9_.-]+$", min_length=1, max_length=100)
    version: int = Field(default=0, ge=0, description="0 = let Registry.save allocate one")
    dataset: str
    spec_hash: str
    architecture: dict[str, Any]
    feature_transform: dict[str, Any]
    metrics: dict[str, float] = Field(default_factory=dict)
    fairness: dict[str, Any] = Field(default_factory=dict)
    epsilon: float | None = None
    delta: float | None = None
    lineage: dict[str, Any] = Field(default_factory=dict)
    code_version: str = ""
    device: str = "cpu"
    wall_time_s: float = 0.0
    energy_j: float = 0.0
    energy_method: str = ""
    co2e_g: float = 0.0
    carbon: dict[str, Any] = Field(default_factory=dict, description="g_per_kwh, region, source")
    joules_per_sample: float = 0.0
    reference: dict[str, Any] = Field(
        default_factory=dict, description="per-feature and score histograms for drift "
        "monitoring (shared/models/reference.py), with their privacy facts")
    training: dict[str, Any] = Field(default_factory=dict)
    privacy: dict[str, Any] = Field(
        default_factory=dict, description="mode, epsilon, delta, accountant, sampling, "
        "max_events_per_subject, noise_multiplier, secure_rng, release ledger verdict")
    gate: dict[str, Any] = Field(default_factory=dict)
    parent_version: int | None = None
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    sha256: str = ""
    signature: str = ""
    key_id: str = ""
    status: str = Field(default="candidate", description="gate outcome: promoted|refused|...")
    variants: dict[str, Any] = Field(
        default_factory=dict, description="compressed variants: file, sha256, bytes, metrics, "
        "latency, status (accepted|refused) and reasons; the full model's size and latency")

    def signed_bytes(self) -> bytes:
        """The canonical bytes the signature covers: sorted-key JSON without `signature`."""
        body = self.model_dump(mode="json", exclude={"signature"})
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

    def announcement(self, action: str = "promote", share: float | None = None,
                     artifact_root: Path | None = None) -> ModelAnnouncement:
        """The `models.updates` announcement for this version."""
        uri = f"registry://{self.model}/{self.version}"
        if artifact_root is not None:
            uri = (artifact_root / self.model / str(self.version) / WEIGHTS_FILE).resolve(
                ).as_uri()
        metrics = {k: float(v) for k, v in self.metrics.items()
                   if isinstance(v, int | float) and v == v}
        return ModelAnnouncement.model_validate({
            "model": self.model, "version": self.version, "dataset": self.dataset,
            "artifact_uri": uri, "sha256": self.sha256, "signature": self.signature,
            "key_id": self.key_id, "metrics": metrics, "epsilon": self.epsilon,
            "action": action, "share": share,
        })
