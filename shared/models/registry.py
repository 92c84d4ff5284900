"""The model registry: signed safetensors artifacts plus JSON model cards in a directory, and a
Redis index (versions, live pointer, live history) that trainer, serving and the CLI share.

Layout: `<registry_path>/<model>/<version>/model.safetensors` and `card.json`, plus the
compressed variants' `model-<variant>.safetensors` (shared/models/variants.py). A version is
written to a temporary directory and renamed into place, so it appears whole or not at all.
The card carries the weights' sha256 (and each variant's, in `variants`) and an Ed25519
signature (by the trainer's `<keys_path>/model-signing.key` or `LEPTON_MODEL_SIGNING_KEY_FILE`)
over its canonical JSON (sorted keys, signature excluded); `Registry.load` and
`Registry.load_variant` verify both with the public key (`model-signing.pub`) and never
unpickle anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError

from shared.config import LeptonSettings
from shared.events import ModelAnnouncement
from shared.signing import key_id, load_public_key, load_signing_key, public_path, sign, verify
from shared.state import make_redis, rkey

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch

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


def _fsync_dir_files(folder: Path) -> None:
    for path in folder.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_header(weights: bytes, what: str) -> None:
    """Parse the safetensors header (length-prefixed JSON) and check the offsets fit."""
    try:
        size = int.from_bytes(weights[:8], "little")
        header = orjson.loads(weights[8:8 + size])
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, IndexError) as error:
        raise ArtifactError(f"{what}: bad safetensors header: {error!r}") from None
    if 8 + size + max(ends, default=0) != len(weights):
        raise ArtifactError(f"{what}: safetensors data does not match its header")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Registry:
    """Model artifacts on disk plus their Redis index, under the configured prefix."""

    def __init__(self, settings: LeptonSettings) -> None:
        self.settings = settings
        self.root = settings.registry_path()
        self._redis = make_redis(settings)

    @property
    def redis(self) -> redis.Redis[bytes]:
        """The Redis client of the index (callers may keep related state beside it)."""
        return self._redis

    def _key(self, model: str, *parts: str) -> str:
        return rkey(self.settings, "models", model, *parts)

    def signing_key_path(self) -> Path:
        """Where the private signing key lives (the trainer's only)."""
        return self.settings.model_signing_key_file or self.settings.keys_path() / SIGNING_KEY

    def public_key_path(self) -> Path:
        """Where the public verification key lives (the only key serving needs): among the
        public keys when `LEPTON_PRINCIPALS_PUBLIC_DIR` is set, else beside the private key."""
        if self.settings.principals_public_dir is not None:
            return self.settings.principals_public_dir / PUBLIC_KEY
        return public_path(self.signing_key_path())

    def public_key(self) -> Ed25519PublicKey:
        """The verification key (ArtifactError when absent)."""
        try:
            return load_public_key(self.public_key_path())
        except (OSError, ValueError) as error:
            raise ArtifactError(f"no model verification key: {error}") from None

    def version_dir(self, model: str, version: int) -> Path:
        """Directory of one version."""
        return self.root / model / str(version)

    def _disk_versions(self, model: str) -> list[int]:
        folder = self.root / model
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())

    def save(self, card: ModelCard, state_dict: dict[str, torch.Tensor],
             variants: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> ModelCard:
        """Write weights (+ compressed `variants`: name -> tensors) and the signed card
        atomically; returns the final card (version allocated when `card.version` is 0, each
        variant's file, sha256 and size in `variants`) and indexes it in Redis."""
        from safetensors.torch import save as save_safetensors

        private = load_signing_key(self.settings.model_signing_key_file,
                                   self.signing_key_path(), "LEPTON_MODEL_SIGNING_KEY_FILE")
        model_dir = self.root / card.model
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
            weights = save_safetensors(tensors, metadata={"model": card.model})
            (tmp / WEIGHTS_FILE).write_bytes(weights)
            digest = hashlib.sha256(weights).hexdigest()
            described = {k: dict(v) for k, v in card.variants.items()}
            for name, variant in (variants or {}).items():
                blob = save_safetensors({k: v.detach().to("cpu").contiguous()
                                         for k, v in variant.items()},
                                        metadata={"model": card.model, "variant": name})
                (tmp / variant_file(name)).write_bytes(blob)
                described.setdefault(name, {}).update(
                    file=variant_file(name), sha256=hashlib.sha256(blob).hexdigest(),
                    bytes=len(blob))
            if described:
                described.setdefault("full", {})["bytes"] = len(weights)
            card = card.model_copy(update={"variants": described})
            version = card.version
            for attempt in range(100):
                if card.version == 0:
                    version = max([0, *self._disk_versions(card.model),
                                   *self._indexed_versions(card.model)]) + 1
                final = card.model_copy(update={
                    "version": version, "sha256": digest, "signature": "",
                    "key_id": key_id(private.public_key()),
                })
                final = final.model_copy(update={"signature": sign(private, final.signed_bytes())})
                (tmp / CARD_FILE).write_bytes(orjson.dumps(
                    final.model_dump(mode="json"), option=orjson.OPT_INDENT_2))
                _fsync_dir_files(tmp)
                try:
                    os.rename(tmp, self.version_dir(card.model, version))
                    _fsync_dir(model_dir)
                    break
                except OSError:
                    if card.version != 0 or attempt == 99:
                        raise ArtifactError(
                            f"{card.model} version {version} already exists") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            self.index(final)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            # the version is saved: the directory is authoritative and versions() re-indexes it
            log.warning("%s v%d saved but not indexed (%s); indexed on the next listing",
                        final.model, final.version, type(error).__name__)
        return final

    def index(self, card: ModelCard) -> None:
        """Record a saved card in the Redis index."""
        pipe = self._redis.pipeline()
        pipe.sadd(rkey(self.settings, "models"), card.model)
        pipe.zadd(self._key(card.model, "versions"), {str(card.version): card.version})
        pipe.hset(self._key(card.model, "cards"), str(card.version),
                  orjson.dumps(card.model_dump(mode="json")))
        pipe.execute()

    def _indexed_versions(self, model: str) -> list[int]:
        return [int(v) for v in self._redis.zrange(self._key(model, "versions"), 0, -1)]

    def models(self) -> list[str]:
        """Model names in the registry (index and directory)."""
        names = {m.decode() for m in self._redis.smembers(rkey(self.settings, "models"))}
        if self.root.is_dir():
            names |= {p.name for p in self.root.iterdir() if p.is_dir()
                      and not p.name.startswith(".")}
        return sorted(names)

    def versions(self, model: str) -> list[int]:
        """Versions of `model`, ascending (the directory is authoritative; Redis is re-indexed
        from it when it lags)."""
        on_disk = self._disk_versions(model)
        indexed = set(self._indexed_versions(model))
        for version in on_disk:
            if version not in indexed:
                try:
                    self.index(self.card(model, version))
                except ArtifactError:
                    continue
        return on_disk

    def flags(self, model: str, version: int) -> dict[str, Any]:
        """A version's operator marks (e.g. `contains_forgotten`); {} when none."""
        try:
            data = orjson.loads((self.version_dir(model, version) / FLAGS_FILE).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def mark(self, model: str, version: int, **flags: Any) -> None:
        """Merge `flags` into a version's marks (atomic replace; the signed card is untouched)."""
        folder = self.version_dir(model, version)
        merged = {**self.flags(model, version), **flags}
        tmp = folder / f".{FLAGS_FILE}.{os.getpid()}"
        tmp.write_bytes(orjson.dumps(merged, option=orjson.OPT_SORT_KEYS))
        tmp.replace(folder / FLAGS_FILE)

    def card(self, model: str, version: int) -> ModelCard:
        """The card of one version as stored (not verified: use `load` for that)."""
        path = self.version_dir(model, version) / CARD_FILE
        try:
            return ModelCard.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as error:
            raise ArtifactError(f"{model} v{version}: unreadable card: {error}") from None

    def verify_card(self, card: ModelCard, public_key: Ed25519PublicKey | None = None) -> None:
        """Check a card's signature and key id (ArtifactError when wrong)."""
        public = public_key or self.public_key()
        if not card.signature or not card.sha256:
            raise ArtifactError(f"{card.model} v{card.version}: card is unsigned")
        if card.key_id != key_id(public):
            raise ArtifactError(f"{card.model} v{card.version}: signed by unknown key "
                                f"{card.key_id!r}")
        if not verify(public, card.signed_bytes(), card.signature):
            raise ArtifactError(f"{card.model} v{card.version}: bad card signature")

    def verify(self, model: str, version: int, public_key: Ed25519PublicKey | None = None
               ) -> tuple[ModelCard, bytes]:
        """The verified card and weight bytes (signature, key, sha256 and safetensors header
        checked; torch not needed); ArtifactError when anything is off."""
        card = self.card(model, version)
        if card.model != model or card.version != version:
            raise ArtifactError(f"{model} v{version}: card names {card.model} v{card.version}")
        self.verify_card(card, public_key)
        try:
            weights = (self.version_dir(model, version) / WEIGHTS_FILE).read_bytes()
        except OSError as error:
            raise ArtifactError(f"{model} v{version}: weights unreadable: {error}") from None
        if hashlib.sha256(weights).hexdigest() != card.sha256:
            raise ArtifactError(f"{model} v{version}: weights sha256 does not match the card")
        _check_header(weights, f"{model} v{version}")
        return card, weights

    def verify_variant(self, model: str, version: int, variant: str,
                       public_key: Ed25519PublicKey | None = None) -> tuple[ModelCard, bytes]:
        """The verified card and a compressed variant's bytes: the card's signature covers the
        variant's sha256, which must match the file; ArtifactError when anything is off or
        the variant was refused (no file)."""
        card = self.card(model, version)
        if card.model != model or card.version != version:
            raise ArtifactError(f"{model} v{version}: card names {card.model} v{card.version}")
        self.verify_card(card, public_key)
        entry = card.variants.get(variant)
        what = f"{model} v{version} {variant}"
        if not isinstance(entry, dict) or entry.get("status") != "accepted" \
                or not entry.get("sha256") or entry.get("file") != variant_file(variant):
            raise ArtifactError(f"{what}: no accepted variant in the card")
        try:
            data = (self.version_dir(model, version) / variant_file(variant)).read_bytes()
        except OSError as error:
            raise ArtifactError(f"{what}: unreadable: {error}") from None
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ArtifactError(f"{what}: sha256 does not match the card")
        _check_header(data, what)
        return card, data

    def load_variant(self, model: str, version: int, variant: str,
                     public_key: Ed25519PublicKey | None = None
                     ) -> tuple[ModelCard, dict[str, torch.Tensor]]:
        """Verified card and the tensors of an accepted compressed variant."""
        from safetensors.torch import load as load_safetensors

        card, data = self.verify_variant(model, version, variant, public_key)
        try:
            return card, load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise ArtifactError(f"{model} v{version} {variant}: bad safetensors: {error}"
                                ) from None

    def load(self, model: str, version: int, public_key: Ed25519PublicKey | None = None
             ) -> tuple[ModelCard, dict[str, torch.Tensor]]:
        """Verified card and weights of one version; ArtifactError when anything is off."""
        from safetensors.torch import load as load_safetensors

        card, weights = self.verify(model, version, public_key)
        try:
            tensors = load_safetensors(weights)
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise ArtifactError(f"{model} v{version}: bad safetensors: {error}") from None
        return card, tensors

    def live(self, model: str) -> int | None:
        """The live version of `model` (None when none is); when Redis lost the pointer it is
        restored from `<registry>/<model>/live.json`, its durable copy."""
        value = self._redis.get(self._key(model, "live"))
        if value is None:
            live, history = self._live_file(model)
            if live is None:
                return None
            pipe = self._redis.pipeline()
            pipe.set(self._key(model, "live"), live, nx=True)
            pipe.delete(self._key(model, "history"))
            if history:
                pipe.rpush(self._key(model, "history"), *history)
            pipe.execute()
            value = self._redis.get(self._key(model, "live"))
        return int(value) if value is not None else None

    def _live_file(self, model: str) -> tuple[int | None, list[int]]:
        try:
            data = orjson.loads((self.root / model / LIVE_FILE).read_bytes())
            return int(data["live"]), [int(v) for v in data.get("history", [])]
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None, []

    def _save_live(self, model: str) -> None:
        """Write the live pointer and history to disk (atomically) after Redis changed."""
        live = self._redis.get(self._key(model, "live"))
        if live is None:
            return
        history = [int(v) for v in self._redis.lrange(self._key(model, "history"), 0, -1)]
        folder = self.root / model
        tmp = folder / f".{LIVE_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(orjson.dumps({"live": int(live), "history": history}))
        tmp.replace(folder / LIVE_FILE)
        _fsync_dir(folder)

    def set_live(self, model: str, version: int) -> int | None:
        """Make `version` live; pushes the previous one onto the rollback history."""
        if version not in self.versions(model):
            raise ArtifactError(f"{model} has no version {version}")
        key, history = self._key(model, "live"), self._key(model, "history")
        previous = self.live(model)
        pipe = self._redis.pipeline()
        pipe.set(key, version)
        if previous is not None and previous != version:
            pipe.rpush(history, previous)
        pipe.execute()
        self._save_live(model)
        return previous

    def rollback(self, model: str) -> tuple[int | None, int]:
        """Make the previously live version live again; returns (was, now)."""
        key, history = self._key(model, "live"), self._key(model, "history")
        current = self.live(model)
        while True:
            raw = self._redis.rpop(history)
            if raw is None:
                raise ArtifactError(f"{model} has no earlier live version to roll back to")
            target = int(raw)
            if target != current and target in self._disk_versions(model):
                break
        self._redis.set(key, target)
        self._save_live(model)
        return current, target
