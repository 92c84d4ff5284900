"""Monitor settings (`LEPTON_MONITOR_*` environment variables)."""

from __future__ import annotations

from pydantic import Field

from shared.config import LeptonSettings


class MonitorSettings(LeptonSettings):
    """Settings of the monitor: windows, drift thresholds, label join, alerts, scaling."""

    monitor_group: str = Field(default="lepton-monitor", description="Kafka consumer group.")
    monitor_batch: int = Field(default=500, ge=1, description="Records per consumed batch.")
    monitor_window: int = Field(
        default=1000, ge=50, description="Predictions per sliding window (per model version).")
    monitor_step: int = Field(
        default=500, ge=1, description="New predictions between two evaluations of a window.")
    monitor_alpha: float = Field(
        default=0.01, gt=0, lt=1, description="Family-wise false-alarm rate per window of the "
        "KS/chi-square tests (Bonferroni over the features and the score).")
    monitor_small_window: int = Field(
        default=1000, ge=10, description="Windows up to this size use KS/chi-square tests; "
        "larger ones Wasserstein/Jensen-Shannon distances.")
    monitor_distance_threshold: float = Field(
        default=0.1, gt=0, description="Drift when the normed Wasserstein or the "
        "Jensen-Shannon distance (base 2) exceeds this (large windows).")
    monitor_label_ttl_s: int = Field(
        default=7 * 24 * 3600, ge=60, description="How long a prediction waits for its label "
        "(and a label for its prediction).")
    monitor_quality_pairs: int = Field(
        default=10_000, ge=10, description="Latest labelled predictions kept per version for "
        "live F1/AUC.")
    monitor_min_labels: int = Field(
        default=200, ge=1, description="Labelled predictions needed before quality alerts.")
    monitor_f1_drop: float = Field(
        default=0.1, ge=0, le=1, description="quality_degraded when live F1 is this far below "
        "the card's offline F1.")
    monitor_alert_cooldown_s: int = Field(
        default=3600, ge=1, description="At most one decision per kind and version this often.")
    monitor_retrain: bool = Field(
        default=False, description="Ask the trainer to end its cycle early on drift or "
        "degraded quality (a Redis flag its loop checks).")
    monitor_energy_baseline_j_per_event: float | None = Field(
        default=None, gt=0, description="Pipeline joules per ingested event to improve on "
        "(unset: the first sustainability report's value).")
    monitor_energy_target_reduction: float = Field(
        default=0.2, ge=0, lt=1, description="Target: this much below the baseline (0.2: "
        "-20 %).")
    monitor_scale_every_s: float = Field(
        default=15.0, gt=0, description="How often the scaling advice metric is recomputed.")
