"""Trainer metrics: records consumed/trained/rejected/held, round duration, released versions
by gate outcome, the DP-SGD ε charged, cycles held for data quality, quality windows ignored,
consumer lag on events.governed (measured by the prefetch thread, which alone touches the
consumer) and the loop's heartbeat (shared/liveness.py)."""

from __future__ import annotations

from opentelemetry import metrics
from opentelemetry.metrics import Meter

from shared.liveness import Heartbeat
from shared.stage.metrics import ConsumerLag


class TrainerMetrics:
    """Instruments on the global meter provider (no-ops until telemetry is set up)."""

    def __init__(self, meter: Meter | None = None) -> None:
        meter = meter or metrics.get_meter("lepton.trainer")
        self.records = meter.create_counter(
            "lepton.trainer.records", unit="{record}",
            description="Records consumed from events.governed, by outcome "
                        "(train, validation, forgotten, skipped, unlabelled, rejected).")
        self.round_seconds = meter.create_histogram(
            "lepton.trainer.round.duration", unit="s",
            description="Wall time of one training round (features, optimiser steps).")
        self.versions = meter.create_counter(
            "lepton.trainer.versions", unit="{version}",
            description="Model versions written to the registry, by gate status.")
        self.epsilon = meter.create_counter(
            "lepton.trainer.epsilon_charged", unit="{epsilon}",
            description="DP-SGD ε charged to the governance ledger, by dataset.")
        self.held = meter.create_counter(
            "lepton.trainer.cycles.held", unit="{cycle}",
            description="Cycles skipped because their data's quality index was below the "
                        "spec's quality.min_index, by dataset.")
        self.quality_ignored = meter.create_counter(
            "lepton.trainer.quality.ignored", unit="{record}",
            description="quality.windows records ignored (unsigned, unknown key, bad "
                        "signature, not allowed, invalid), by reason.")
        # beats every poll slice; a cycle's end (DP-SGD release, evaluation) does not beat
        self.heartbeat = Heartbeat("trainer", meter)
        self.lag = ConsumerLag("trainer", meter)
