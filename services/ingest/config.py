"""Ingest settings: `LEPTON_INGEST_*` environment variables on top of the common ones."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.config import LeptonSettings
from shared.topics import Topic, Topics


class IngestSettings(LeptonSettings):
    """Settings of the ingest service."""

    ingest_group: str | None = Field(
        default=None, description="Consumer group id (default: <topic prefix>ingest)."
    )
    ingest_instance: str = Field(
        default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Replica name: unique per running replica, stable across its restarts "
                    "(static group membership and the transactional id derive from it).",
    )
    ingest_batch_size: int = Field(default=1000, ge=1, le=100_000,
                                   description="Most records per transaction.")
    ingest_batch_wait_ms: int = Field(default=10, ge=1, le=10_000,
                                      description="Longest wait to fill a batch.")
    ingest_dedup_window_s: int = Field(default=3600, ge=1,
                                       description="How long an event id is remembered.")
    ingest_unknown_fields: Literal["drop", "reject"] = Field(
        default="drop", description="Payload fields not in the spec: drop them (recorded as a "
                                    "change) or reject the event.")
    ingest_specs_dir: Path | None = Field(
        default=None, description="Extra dataset specs (<name>.yaml) beside the built-in ones.")
    ingest_key_cache_size: int = Field(default=100_000, ge=1,
                                       description="Unwrapped data keys kept in memory.")
    ingest_key_cache_ttl_s: float = Field(default=30.0, gt=0, le=3600,
                                          description="Longest a cached data key is used.")
    ingest_fetch_wait_ms: int = Field(
        default=10, ge=1, le=5000,
        description="fetch.wait.max.ms: longest a fetch waits for data (the embedded broker "
                    "always waits this long, so it bounds added latency there).")
    ingest_session_timeout_ms: int = Field(default=10_000, ge=1000, le=300_000,
                                           description="Consumer group session timeout.")
    ingest_transaction_timeout_ms: int = Field(default=60_000, ge=1000, le=900_000,
                                               description="Kafka transaction timeout.")
    ingest_quality_window_s: float = Field(
        default=60.0, ge=1, le=86_400,
        description="Length of a data-quality window (aligned to the epoch, so the windows "
                    "of all replicas line up).")

    def group_id(self) -> str:
        """The consumer group."""
        return self.ingest_group or f"{self.topic_prefix}ingest"

    def transactional_id(self) -> str:
        """The producer's transactional id: stable per replica so a restart fences its past."""
        return f"{self.group_id()}.tx.{self.ingest_instance}"

    def quality_dir(self) -> Path:
        """Where each replica appends its per-window quality counts (<replica>.jsonl)."""
        return self.data_dir / "ingest" / "quality"

    def offsets_topic(self) -> str:
        """Where each transaction also checkpoints the input offsets it consumed."""
        return Topics(self.topic_prefix).name(Topic.INGEST_OFFSETS)
