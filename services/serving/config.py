"""Serving settings (`LEPTON_SERVING_*` environment variables)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from shared.config import ConfigError, LeptonSettings


class ServingSettings(LeptonSettings):
    """Settings of the serving process: gRPC endpoint, limits, batching, rollout, Kafka path."""

    serving_addr: str = Field(default="0.0.0.0:50051", description="gRPC listen address.")
    serving_http_addr: str = Field(
        default="0.0.0.0:8080", description="HTTP/REST (OIP v2 + /v1 predict) listen address; "
        "empty: no HTTP API."
    )
    serving_log_sample: float = Field(
        default=1.0, ge=0, le=1, description="Share of answered predictions sent to "
        "predictions.log (0: none)."
    )
    serving_log_queue: int = Field(
        default=10000, ge=1, description="Prediction-log records buffered before new ones "
        "are dropped (and counted)."
    )
    serving_models: str = Field(
        default="", description="Comma-separated model names to host (empty: every registered)."
    )
    serving_auth: Literal["token", "none"] = Field(
        default="token", description="'none' runs without auth (logged as a warning); "
        "otherwise both tokens are required.")
    serving_auth_token: SecretStr | None = Field(
        default=None, description="Bearer token for prediction and read-only calls.")
    serving_auth_token_file: Path | None = Field(
        default=None, description="File holding the predict token (a compose secret).")
    serving_admin_token: SecretStr | None = Field(
        default=None, description="Distinct bearer token for admin calls (SetRollout).")
    serving_admin_token_file: Path | None = Field(
        default=None, description="File holding the admin token (a compose secret).")
    serving_tls_cert: Path | None = Field(default=None, description="PEM certificate chain.")
    serving_tls_key: Path | None = Field(default=None, description="PEM private key.")
    serving_tls_client_ca: Path | None = Field(
        default=None, description="PEM CA bundle; when set, clients need certificates (mTLS)."
    )
    serving_max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    serving_max_batch_items: int = Field(default=4096, ge=1, description="Per PredictBatch.")
    serving_batching: bool = Field(default=False, description="Dynamic batching of unary calls.")
    serving_batch_max_size: int = Field(default=64, ge=1)
    serving_batch_max_wait_ms: float = Field(default=1.0, ge=0, le=1000)
    serving_threshold: float = Field(default=0.5, ge=0, le=1)
    serving_canary_share: float = Field(default=0.1, ge=0, le=1)
    serving_warmup_rows: int = Field(default=16, ge=1)
    serving_drain_timeout_s: float = Field(default=30.0, ge=0)
    serving_pinned_cache: int = Field(default=4, ge=0, description="Extra pinned versions kept.")
    serving_pinned_loads_per_min: int = Field(
        default=30, ge=1, description="Pinned-version loads per model per minute (more: "
        "RESOURCE_EXHAUSTED until the budget refills).")
    serving_kafka: bool = Field(default=True, description="Consume predictions.requests.")
    serving_group: str = Field(default="lepton-serving", description="Kafka consumer group.")
    serving_kafka_batch: int = Field(default=500, ge=1)
    serving_dedup_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    serving_torch_threads: int = Field(default=1, ge=1)
    serving_numpy_forward: bool = Field(
        default=True, description="Score Linear/ReLU stacks with a verified NumPy forward pass."
    )
    serving_variant: Literal["auto", "full", "int8", "fp16"] = Field(
        default="auto", description="Which signed variant of a version to score with: `auto` "
        "takes the one meant for this device (fp16 on CUDA, int8 on CPU) when the card "
        "accepted it and it is not slower than full here; a named one falls back to full "
        "(logged) when the card has no accepted variant of that name.")

    @field_validator("serving_addr", "serving_http_addr")
    @classmethod
    def _addr(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name == "serving_http_addr":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:50051")
        return value

    @field_validator("serving_tls_key")
    @classmethod
    def _tls_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if (info.data.get("serving_tls_cert") is None) != (value is None):
            raise ValueError("goes together with LEPTON_SERVING_TLS_CERT (set both or neither)")
        return value

    @field_validator("serving_tls_client_ca")
    @classmethod
    def _client_ca(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("serving_tls_cert") is None:
            raise ValueError("needs LEPTON_SERVING_TLS_CERT and LEPTON_SERVING_TLS_KEY")
        return value

    def model_names(self) -> list[str]:
        """The configured model names (empty: host every model in the registry)."""
        return [name.strip() for name in self.serving_models.split(",") if name.strip()]

    def predict_token(self) -> str | None:
        """The predict token (from the variable, else its file), or None when unset/empty."""
        return _secret(self.serving_auth_token, self.serving_auth_token_file)

    def admin_token(self) -> str | None:
        """The admin token (from the variable, else its file), or None when unset/empty."""
        return _secret(self.serving_admin_token, self.serving_admin_token_file)


def _secret(value: SecretStr | None, path: Path | None) -> str | None:
    if value is not None and value.get_secret_value().strip():
        return value.get_secret_value().strip()
    if path is not None:
        try:
            text = path.read_text().strip()
        except OSError as error:
            raise ConfigError(f"cannot read token file {path}: {error.strerror}") from None
        return text or None
    return None
