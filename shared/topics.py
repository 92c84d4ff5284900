"""The single registry of Lepton topic names (docs/ARCHITECTURE.md, "The pipeline") and the
settings each topic needs on a real cluster (`lepton topics create` applies them, `lepton topics
check` verifies)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Topic(StrEnum):
    """Logical topic names; the wire name is the configured prefix plus this value."""

    RAW = "events.raw"
    CLEAN = "events.clean"
    REJECTED = "events.rejected"
    GOVERNED = "events.governed"
    AUDIT_LOG = "audit.log"
    AUDIT_REQUESTS = "audit.requests"
    MODELS = "models.updates"
    PREDICT_REQUESTS = "predictions.requests"
    PREDICT_RESULTS = "predictions.results"
    PREDICTION_LOG = "predictions.log"
    INGEST_OFFSETS = "ingest.offsets"
    GOVERNANCE_OFFSETS = "governance.offsets"
    FEDERATION_ROUNDS = "federation.rounds"
    FEDERATION_UPDATES = "federation.updates"
    QUALITY_WINDOWS = "quality.windows"


@dataclass(frozen=True)
class TopicSpec:
    """Per-topic settings beyond partitions and replication."""

    compacted: bool = False
    retention_ms: int | None = None  # None: the broker's default; -1: keep forever

    def configs(self) -> dict[str, str]:
        """Kafka topic configs for this spec."""
        configs = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        return configs


# Positions checkpoints keep only the latest per key; the audit log is never expired by Kafka
# (it is also sealed to disk, but a reader replaying the topic must see every record); quality
# windows are read from the beginning by a starting trainer, so they are kept a week only.
TOPIC_SPECS: dict[Topic, TopicSpec] = {
    Topic.INGEST_OFFSETS: TopicSpec(compacted=True),
    Topic.GOVERNANCE_OFFSETS: TopicSpec(compacted=True),
    Topic.AUDIT_LOG: TopicSpec(retention_ms=-1),
    Topic.QUALITY_WINDOWS: TopicSpec(retention_ms=7 * 24 * 3600 * 1000),
}


def topic_spec(topic: Topic) -> TopicSpec:
    """The settings of `topic` (the default spec unless TOPIC_SPECS names it)."""
    return TOPIC_SPECS.get(topic, TopicSpec())


@dataclass(frozen=True)
class Topics:
    """Wire names of every topic under one prefix."""

    prefix: str = "lepton."

    def name(self, topic: Topic) -> str:
        """Return the wire name of `topic`."""
        return f"{self.prefix}{topic.value}"

    def all(self) -> list[str]:
        """Return the wire names of every platform topic."""
        return [self.name(t) for t in Topic]

    @property
    def raw(self) -> str:
        """Producers' raw events."""
        return self.name(Topic.RAW)

    @property
    def clean(self) -> str:
        """Validated, cleaned, PII-protected events."""
        return self.name(Topic.CLEAN)

    @property
    def rejected(self) -> str:
        """Dead-letter queue: original bytes plus reason headers."""
        return self.name(Topic.REJECTED)

    @property
    def governed(self) -> str:
        """Events released for training, DP applied."""
        return self.name(Topic.GOVERNED)

    @property
    def audit_log(self) -> str:
        """Sealed, hash-chained audit records."""
        return self.name(Topic.AUDIT_LOG)

    @property
    def audit_requests(self) -> str:
        """Decisions from other services and the CLI, for governance to seal into the log."""
        return self.name(Topic.AUDIT_REQUESTS)

    @property
    def models(self) -> str:
        """Model announcements."""
        return self.name(Topic.MODELS)

    @property
    def predict_requests(self) -> str:
        """Prediction requests from downstream apps."""
        return self.name(Topic.PREDICT_REQUESTS)

    @property
    def predict_results(self) -> str:
        """Prediction results for downstream apps."""
        return self.name(Topic.PREDICT_RESULTS)

    @property
    def prediction_log(self) -> str:
        """Every answered prediction (sampled), for monitoring: PredictionLogRecord JSON."""
        return self.name(Topic.PREDICTION_LOG)

    @property
    def federation_rounds(self) -> str:
        """A federation coordinator's signed round tasks (global model) for its sites."""
        return self.name(Topic.FEDERATION_ROUNDS)

    @property
    def federation_updates(self) -> str:
        """Sites' signed answers to round tasks (clipped model updates, held-out summaries)."""
        return self.name(Topic.FEDERATION_UPDATES)

    @property
    def quality_windows(self) -> str:
        """Ingest's signed data-quality summary per dataset, closed window and replica."""
        return self.name(Topic.QUALITY_WINDOWS)
