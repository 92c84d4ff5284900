"""Federation coordinator settings (`LEPTON_FEDERATION_*` environment variables)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from shared.config import LeptonSettings
from shared.models.gate import MIN_GROUP_POSITIVES, MIN_GROUP_ROWS


class FederationSettings(LeptonSettings):
    """Settings of the coordinator: which sites, how many rounds, quorum and deadlines, the
    local-training and client-level DP parameters, and the gate."""

    federation_dataset: str = Field(default="transactions", description="Dataset spec.")
    federation_model: str | None = Field(
        default=None, description="Registry name of the federated model "
        "(default: <dataset>-federated).")
    federation_specs_dir: Path | None = Field(default=None, description="Extra specs dir.")
    federation_sites: tuple[str, ...] = Field(
        default=(), description="The sites (their names); each answers as its own trainer "
        "principal, whose public key is `<site>.pub` in the sites dir.")
    federation_sites_dir: Path | None = Field(
        default=None, description="Public keys of the sites (default: <keys dir>/sites).")
    federation_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Id of the (first) federation (default: a fresh one each run).")
    federation_rounds: int = Field(default=10, ge=1, le=10_000)
    federation_min_sites: int = Field(
        default=2, ge=1, description="Quorum: a round needs this many site updates in time.")
    federation_round_timeout_s: float = Field(
        default=120.0, gt=0, description="Deadline of a round; later answers are dropped and "
        "recorded.")
    federation_first_round_timeout_s: float | None = Field(
        default=None, gt=0, description="Deadline of round 1, where each site also reads its "
        "data and has its governance charge the federation (default: the round timeout).")
    federation_local_epochs: float = Field(
        default=0.5, gt=0, description="Passes over its rows a site makes per round.")
    federation_minibatch: int = Field(
        default=128, ge=1, description="Expected rows per DP-SGD step at a site.")
    federation_learning_rate: float = Field(
        default=4.0, gt=0, description="Sites' local SGD learning rate (DP-SGD steps average "
        "per-sample gradients clipped to norm 1, so they are small).")
    federation_clip_norm: float = Field(
        default=10.0, gt=0, description="Client-level clipping norm of each site's update.")
    federation_noise_multiplier: float = Field(
        default=0.0, ge=0, description="Server-side Gaussian noise: std = multiplier x clip "
        "norm x the largest site weight (Flower's z·C/m for equal weights); 0: none.")
    federation_epsilon: float | None = Field(
        default=None, gt=0, description="Per-subject ε each site spends on the federation "
        "(default: the spec's epsilon_per_release; a site never spends more than its own).")
    federation_secure_aggregation: bool = Field(
        default=False, description="Double-masked secure aggregation (services/federation/"
        "secure.py): the coordinator sees only sums of at least two sites' updates and cannot "
        "re-clip them (it relies on the sites' clipping).")
    federation_seed: int = Field(default=0, description="Initial weights' seed.")
    federation_interval_s: float | None = Field(
        default=None, gt=0, description="Run a new federation this long after each one ends "
        "(unset: run one and exit).")
    federation_gate_metrics: tuple[str, ...] = ("f1", "roc_auc")
    federation_gate_tolerance: float = Field(default=0.02, ge=0)
    federation_max_dp_diff: float = Field(default=0.25, ge=0, le=1)
    federation_max_eo_diff: float = Field(default=0.25, ge=0, le=1)
    federation_fairness_min_rows: int = Field(
        default=MIN_GROUP_ROWS, ge=1,
        description="Pooled held-out rows a group needs to be compared (demographic parity).")
    federation_fairness_min_positives: int = Field(
        default=MIN_GROUP_POSITIVES, ge=1,
        description="Pooled held-out positives a group needs to be compared (equal opportunity).")

    @field_validator("federation_sites")
    @classmethod
    def _sites(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one site")
        if len(set(value)) != len(value):
            raise ValueError("a site is named twice")
        for site in value:
            if not re.fullmatch(r"[a-z0-9_-]+", site):
                raise ValueError(f"bad site name {site!r} (lower-case letters, digits, _ and -)")
        return value

    @field_validator("federation_gate_metrics")
    @classmethod
    def _gate_metrics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(value) - {"accuracy", "precision", "recall", "f1", "roc_auc"}
        if unknown:
            raise ValueError(f"unknown {sorted(unknown)}")
        return value

    @model_validator(mode="after")
    def _quorum(self) -> FederationSettings:
        if self.federation_min_sites > len(self.federation_sites):
            raise ValueError("LEPTON_FEDERATION_MIN_SITES is above the number of sites")
        if self.federation_secure_aggregation and len(self.federation_sites) < 2:
            raise ValueError("secure aggregation needs at least two sites")
        return self

    def model_name(self) -> str:
        """The registry name of the federated model."""
        return self.federation_model or f"{self.federation_dataset}-federated"

    def sites_path(self) -> Path:
        """Where the sites' public keys (`<site>.pub`) are."""
        return self.federation_sites_dir or self.keys_path() / "sites"
