"""Governance settings (`LEPTON_GOVERNANCE_*` environment variables) and the paths they imply."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.config import LeptonSettings

AUDIT_KEY_NAME = "audit-signing.key"


class GovernanceSettings(LeptonSettings):
    """Settings of the governance service."""

    governance_dp_enabled: bool = Field(
        default=True,
        description="Apply differential privacy and charge the ledger; false passes features "
        "through un-noised and charges ε=0 (audited as such).",
    )
    governance_batch_size: int = Field(
        default=500, ge=1, le=20_000, description="Records per consume/transaction batch.")
    governance_poll_timeout_s: float = Field(
        default=0.01, gt=0, description="Longest wait to fill a batch (it bounds the latency "
        "governance adds at low rates; at high rates batches fill before it).")
    governance_fetch_wait_ms: int = Field(
        default=10, ge=1, le=5000,
        description="fetch.wait.max.ms: longest a fetch waits for data (the embedded broker "
                    "always waits this long, so it bounds added latency there).")
    governance_group: str | None = Field(
        default=None, description="Consumer group (default: <topic prefix>governance).")
    governance_transactional_id: str | None = Field(
        default=None, description="Kafka transactional.id (default: <topic prefix>governance-0).")
    governance_checkpoint_every: int = Field(
        default=1000, ge=1, description="Sign a checkpoint after this many new audit records.")
    governance_checkpoint_seconds: float = Field(
        default=10.0, gt=0, description="... or after this many seconds with unsigned records.")
    governance_fsync: bool = Field(
        default=True, description="fsync audit and ledger segments before each Kafka commit.")
    governance_segment_bytes: int = Field(
        default=64 * 1024 * 1024, ge=4096, description="Roll segment files at this size.")
    governance_specs_dir: Path | None = Field(
        default=None, description="Extra dataset specs directory (<name>.yaml).")
    governance_max_charge_epsilon: float = Field(
        default=100.0, gt=0, allow_inf_nan=False,
        description="Largest ε one release_charge decision may charge (larger: refused).")
    governance_session_timeout_ms: int = Field(
        default=10_000, ge=1000, description="Consumer group session timeout.")
    governance_audit_key_file: Path | None = Field(
        default=None, description="The audit checkpoint signing key (a read-only secret; "
        "default: <keys dir>/audit-signing.key, created on first use).")

    def group_id(self) -> str:
        """The consumer group of the governance loop."""
        return self.governance_group or f"{self.topic_prefix}governance"

    def transactional_id(self) -> str:
        """The producer's transactional.id (one per running instance)."""
        return self.governance_transactional_id or f"{self.topic_prefix}governance-0"

    def governance_dir(self) -> Path:
        """Root of the governance service's durable files."""
        return self.data_dir / "governance"

    def audit_dir(self) -> Path:
        """The audit log's segment store and checkpoints."""
        return self.governance_dir() / "audit"

    def ledger_dir(self) -> Path:
        """The privacy ledger's append-only charge log."""
        return self.governance_dir() / "ledger"

    def audit_key_path(self) -> Path:
        """The Ed25519 key that signs audit checkpoints (its .pub beside it when created)."""
        return self.governance_audit_key_file or self.keys_path() / AUDIT_KEY_NAME
