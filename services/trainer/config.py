"""Trainer settings (`LEPTON_TRAINER_*` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from shared.config import LeptonSettings
from shared.models.gate import MIN_GROUP_POSITIVES, MIN_GROUP_ROWS


class TrainerSettings(LeptonSettings):
    """Settings of the trainer service."""

    trainer_dataset: str = Field(default="transactions", description="Dataset spec to train.")
    trainer_model: str | None = Field(default=None, description="Model name (default: dataset).")
    trainer_specs_dir: Path | None = Field(default=None, description="Extra dataset specs dir.")
    trainer_group: str | None = Field(
        default=None, description="Consumer group (default: lepton-trainer-<model>).")
    trainer_workers: int = Field(default=1, ge=1, le=64, description="torch.distributed ranks.")
    trainer_device: Literal["auto", "cpu", "cuda"] = "auto"
    trainer_cpu_threads: int = Field(
        default=1, ge=0, description="torch intra-op threads per CPU rank (0 = torch default); "
        "small models train faster single-threaded beside the Kafka client's threads.")
    trainer_batch_size: int = Field(default=512, ge=1, description="Records per worker a round.")
    trainer_max_wait_s: float = Field(default=1.0, gt=0, description="Longest wait for a batch.")
    trainer_cycle_rows: int = Field(
        default=5000, ge=1, description="Records consumed before a candidate is evaluated.")
    trainer_cycle_s: float = Field(default=60.0, gt=0, description="Longest cycle in seconds.")
    trainer_minibatch: int = Field(default=32, ge=1, description="Rows per optimiser step.")
    trainer_epochs: int | None = Field(
        default=None, ge=1, description="Passes over each batch (default: spec).")
    trainer_learning_rate: float | None = Field(
        default=None, gt=0, description="Adam learning rate (default: spec).")
    trainer_val_percent: int = Field(default=20, ge=1, le=90)
    trainer_val_window: int = Field(default=20_000, ge=10, description="Held-out rows kept.")
    trainer_seed: int = 0
    trainer_dp_enabled: bool = Field(
        default=True, description="DP-SGD for `model`-mode datasets; false is refused at start "
        "unless the spec says `allow_non_private: true`.")
    trainer_dp_max_grad_norm: float = Field(default=1.0, gt=0, description="DP-SGD clip norm.")
    trainer_charge_timeout_s: float = Field(
        default=120.0, gt=0, description="Longest wait for governance's verdict on a release "
        "charge; no verdict means no announcement.")
    trainer_gate_metrics: tuple[str, ...] = ("f1", "roc_auc")
    trainer_gate_tolerance: float = Field(default=0.02, ge=0)
    trainer_max_dp_diff: float = Field(default=0.25, ge=0, le=1,
                                       description="Demographic-parity difference bound.")
    trainer_max_eo_diff: float = Field(default=0.25, ge=0, le=1,
                                       description="Equal-opportunity difference bound.")
    trainer_fairness_min_rows: int = Field(
        default=MIN_GROUP_ROWS, ge=1, description="Held-out rows a group needs for its positive "
        "rate to be compared (demographic parity); smaller groups are listed as not judged.")
    trainer_fairness_min_positives: int = Field(
        default=MIN_GROUP_POSITIVES, ge=1, description="Held-out positives a group needs for its "
        "true-positive rate to be compared (equal opportunity); smaller groups are listed as not "
        "judged.")
    trainer_link_cap: int = Field(default=128, ge=0, description="Span links per batch span.")
    trainer_exit_when_idle_s: float | None = Field(
        default=None, gt=0, description="Exit after this long without data (tests, batch jobs).")
    trainer_reference_epsilon: float = Field(
        default=0.2, ge=0, description="Part of each model-mode release's ε spent on the "
        "card's DP reference histograms for drift monitoring (0: no reference).")
    trainer_quality_slack_s: float = Field(
        default=5.0, ge=0, le=3600, description="Quality hold: how much earlier than governance "
        "released an event ingest may have committed it; quality windows ending up to this "
        "long before a cycle's first record still count for it.")
    trainer_master_addr: str = "127.0.0.1"
    trainer_master_port: int = Field(default=0, ge=0, le=65535, description="0 = a free port.")
    trainer_dist_timeout_s: float = Field(default=120.0, gt=0)
    trainer_federation_site: str | None = Field(
        default=None, pattern=r"^[a-z0-9_-]+$", description="Run as this federated site: "
        "train only for a coordinator's round tasks, on this site's own governed events; only "
        "clipped model updates and held-out summaries leave.")
    trainer_federation_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap of the federation's cluster (default: this "
        "site's own).")
    trainer_federation_topic_prefix: str = Field(
        default="lepton.", pattern=r"^[A-Za-z0-9._-]*$",
        description="Topic prefix of the federation's topics on that cluster.")
    trainer_federation_keys_dir: Path | None = Field(
        default=None, description="Where the coordinator's public key `federation.pub` is "
        "(default: LEPTON_PRINCIPALS_PUBLIC_DIR).")
    trainer_tune_storage: Literal["redis", "journal"] = Field(
        default="redis", description="Where `lepton tune` keeps its Optuna studies: Redis "
        "(under the key prefix) or a journal file in the data dir.")

    @model_validator(mode="after")
    def _gate_metrics(self) -> TrainerSettings:
        allowed = {"accuracy", "precision", "recall", "f1", "roc_auc"}
        unknown = set(self.trainer_gate_metrics) - allowed
        if unknown:
            raise ValueError(f"trainer_gate_metrics: unknown {sorted(unknown)}; "
                             f"choose from {sorted(allowed)}")
        return self

    @model_validator(mode="after")
    def _site(self) -> TrainerSettings:
        if self.trainer_federation_site and self.trainer_workers != 1:
            raise ValueError("trainer_federation_site: a federated site runs one worker")
        return self

    def federation_settings(self) -> TrainerSettings:
        """These settings pointed at the federation's cluster and topic prefix."""
        return self.model_copy(update={
            "kafka_bootstrap": self.trainer_federation_bootstrap or self.kafka_bootstrap,
            "topic_prefix": self.trainer_federation_topic_prefix})

    def model_name(self) -> str:
        """The registry name of the trained model."""
        return self.trainer_model or self.trainer_dataset

    def group_id(self) -> str:
        """The Kafka consumer group of this trainer."""
        return self.trainer_group or f"lepton-trainer-{self.model_name()}"
