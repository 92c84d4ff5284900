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

Modules: `card` (the signed card, file names, ArtifactError), `files` (durable writes, sha256
and the safetensors header check), `index` (the Redis index and the live pointer) and
`artifacts` (`Registry`: saving, verifying and loading versions).
"""

from shared.models.registry.artifacts import Registry
from shared.models.registry.card import (
    CARD_FILE,
    FLAGS_FILE,
    LIVE_FILE,
    PUBLIC_KEY,
    SIGNING_KEY,
    WEIGHTS_FILE,
    ArtifactError,
    ModelCard,
    variant_file,
)
from shared.models.registry.files import sha256_file

__all__ = [
    "CARD_FILE",
    "FLAGS_FILE",
    "LIVE_FILE",
    "PUBLIC_KEY",
    "SIGNING_KEY",
    "WEIGHTS_FILE",
    "ArtifactError",
    "ModelCard",
    "Registry",
    "sha256_file",
    "variant_file",
]
