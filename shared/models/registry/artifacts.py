"""Saving, verifying and loading model versions: consumes a ModelCard with its weights (and
compressed variants) and the model signing key, produces the signed version directory; on
load it consumes the public key and produces the verified card and tensors, never
unpickling anything."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from safetensors import SafetensorError

from shared.durable import fsync_dir
from shared.models.registry.card import (
    CARD_FILE,
    PUBLIC_KEY,
    SIGNING_KEY,
    WEIGHTS_FILE,
    ArtifactError,
    ModelCard,
    variant_file,
)
from shared.models.registry.files import check_header, fsync_files
from shared.models.registry.index import RegistryIndex
from shared.signing import key_id, load_public_key, load_signing_key, public_path, sign, verify

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import torch


class Registry(RegistryIndex):
    """Model artifacts on disk plus their Redis index, under the configured prefix."""

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
                fsync_files(tmp)
                try:
                    os.rename(tmp, self.version_dir(card.model, version))
                    fsync_dir(model_dir)
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
        check_header(weights, f"{model} v{version}")
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
        check_header(data, what)
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
