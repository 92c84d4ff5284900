"""Settings shared by every process, read from `LEPTON_*` environment variables.

Each service subclasses `LeptonSettings` in its own `config.py`, naming its fields
`<service>_<name>` so that the environment variable is `LEPTON_<SERVICE>_<NAME>`.
`load_settings` turns a validation error into one readable line per variable and exits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LEPTON_"
EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the broker or server it needs is not there
EXIT_CANTCREAT = 73  # EX_CANTCREAT: an output file the operator named cannot be written
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")


class ConfigError(RuntimeError):
    """A setting is missing or invalid; the message names the environment variable."""


class LeptonSettings(BaseSettings):
    """Settings common to every Lepton process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", validate_default=True
    )

    kafka_bootstrap: str | None = Field(
        default=None,
        description="Kafka bootstrap servers; unset means the embedded broker's bootstrap file.",
    )
    bootstrap_file: Path | None = Field(
        default=None, description="File the embedded broker wrote its address to."
    )
    kafka_security_protocol: str = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_* protocols)."
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = Field(default=None, description="Never logged.")
    kafka_ssl_ca_location: Path | None = Field(
        default=None, description="PEM file of the CAs that sign the brokers' certificates."
    )
    kafka_ssl_cert_location: Path | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS."
    )
    kafka_ssl_key_location: Path | None = Field(
        default=None, description="Client private key (PEM) for mutual TLS."
    )
    kafka_extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="JSON object of further librdkafka properties, applied to every client.",
    )
    kafka_auto_create: bool = Field(
        default=True,
        description="Let clients auto-create missing topics; false: fail fast when one is "
        "missing (run `lepton topics create`).",
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = Field(default="lepton:", description="Prefix of every Redis key.")
    topic_prefix: str = "lepton."
    data_dir: Path = Path(".lepton")
    registry_dir: Path | None = Field(
        default=None, description="Model registry directory (default: <data_dir>/registry)."
    )
    keys_dir: Path | None = Field(
        default=None, description="Key material directory (default: <data_dir>/keys)."
    )
    principal_key_file: Path | None = Field(
        default=None, description="This process's own principal key (a read-only secret; "
        "unset: <keys dir>/principals/<name>.key, created on first use).")
    principals_public_dir: Path | None = Field(
        default=None, description="Public keys (<principal>.pub) this process trusts "
        "(default: <keys dir>/principals).")
    token_key_file: Path | None = Field(
        default=None, description="The platform key (ingest, governance and the operator "
        "only; a read-only secret; default: <keys dir>/token.key, created on first use).")
    model_signing_key_file: Path | None = Field(
        default=None, description="The trainer's model-card signing key (a read-only secret; "
        "default: <keys dir>/model-signing.key, created on first use).")
    dlq_key_file: Path | None = Field(
        default=None, description="The DLQ private key (the operator's `lepton dlq` only; "
        "default: <keys dir>/principals/dlq.key).")
    governed_mac_key_file: Path | None = Field(
        default=None, description="Key authenticating events.governed records (shared by "
        "governance and the trainer only; default: <keys dir>/governed-mac.key).")
    log_level: str = "INFO"
    log_format: str = Field(
        default="auto", pattern="^(auto|json|text)$",
        description="json, text, or auto (text on a terminal, JSON otherwise).")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Serve Prometheus metrics on this port."
    )
    metrics_host: str = Field(
        default="0.0.0.0", min_length=1, max_length=255,  # noqa: S104 (scraped across hosts)
        description="Listen address of the Prometheus endpoint (`lepton up`: loopback).")
    carbon_region: str | None = Field(
        default=None, max_length=64, description="Grid region for CO2e: ISO alpha-3 country "
        "(FRA) or cloud region (gcp:europe-west1), looked up in codecarbon's data.")
    carbon_g_per_kwh: float | None = Field(
        default=None, ge=0, le=5000, description="Grid carbon intensity (g CO2e/kWh); wins "
        "over the region lookup.")
    energy_watts_per_core: float = Field(
        default=10.0, gt=0, description="Energy estimate without RAPL/NVML: W per busy core.")
    energy_record_every_s: float = Field(
        default=10.0, gt=0, description="How often a process writes its energy record to "
        "Redis.")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("kafka_security_protocol")
    @classmethod
    def _security_protocol(cls, value: str) -> str:
        upper = value.upper()
        if upper not in SECURITY_PROTOCOLS:
            raise ValueError(f"must be one of {', '.join(SECURITY_PROTOCOLS)}")
        return upper

    @field_validator("kafka_sasl_mechanism")
    @classmethod
    def _sasl_mechanism(cls, value: str | None) -> str | None:
        if value is None:
            return None
        upper = value.upper()
        if upper not in SASL_MECHANISMS:
            raise ValueError(f"must be one of {', '.join(SASL_MECHANISMS)}")
        return upper

    @field_validator("topic_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may hold only letters, digits, '.', '_' and '-'")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return upper

    def registry_path(self) -> Path:
        """The model registry directory."""
        return self.registry_dir or self.data_dir / "registry"

    def keys_path(self) -> Path:
        """The key material directory (signing keys, keyrings)."""
        return self.keys_dir or self.data_dir / "keys"

    def default_bootstrap_file(self) -> Path:
        """Where `lepton broker` writes, and clients look for, the embedded broker's address."""
        return self.bootstrap_file or self.data_dir / "broker.bootstrap"

    def bootstrap_servers(self) -> str:
        """Resolve the Kafka bootstrap servers, or raise ConfigError naming the variable."""
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        path = self.default_bootstrap_file()
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if not text:
            raise ConfigError(
                f"{ENV_PREFIX}KAFKA_BOOTSTRAP is not set and no embedded broker address is in "
                f"{path}: set it, or start `lepton broker` (or `lepton up`) first"
            )
        return text


S = TypeVar("S", bound=BaseSettings)


def describe_error(cls: type[BaseSettings], error: ValidationError) -> str:
    """Render a settings validation error as lines `VARIABLE: reason`."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    lines = []
    for item in error.errors():
        name = "_".join(str(part) for part in item["loc"]).upper()
        reason = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "missing":
            reason = "is required but not set"
        lines.append(f"{prefix}{name}: {reason}")
    return "\n".join(lines)


def load_settings(cls: type[S]) -> S:
    """Build a settings object from the environment, or exit with one line per bad variable."""
    try:
        return cls()
    except ValidationError as error:
        print(f"configuration error: {describe_error(cls, error)}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
