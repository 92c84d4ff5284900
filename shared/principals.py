"""Principals: each service and the operator CLI has its own Ed25519 identity, and signs what it
says on the bus (decisions, data-quality windows) over a canonical encoding that the receiver
verifies.

Consumes the keys directory: `<keys>/principals/<name>.key` (0600, in a 0700 directory, created on
first use) with `<name>.pub` beside it; receivers read only the `.pub` files. Produces signed
`Decision`s (`key_id`, `signature`) and verifies them against a public key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.config import LeptonSettings
from shared.events import Decision
from shared.signing import key_id, load_signing_key, sign, verify

PrincipalName = Literal["ingest", "governance", "trainer", "serving", "monitor", "operator",
                        "federation"]
PRINCIPAL_NAMES: tuple[PrincipalName, ...] = get_args(PrincipalName)
PRINCIPALS_DIR = "principals"
DECISION_DOMAIN = b"lepton.decision.v1\n"


def principals_dir(settings: LeptonSettings) -> Path:
    """Where the principals' keys live (`<keys>/principals`)."""
    return settings.keys_path() / PRINCIPALS_DIR


def public_keys_dir(settings: LeptonSettings) -> Path:
    """Where a receiver reads the principals' public keys (`<name>.pub`)."""
    return settings.principals_public_dir or principals_dir(settings)


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if absent, and make it 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@dataclass(frozen=True, slots=True)
class Principal:
    """One identity that signs: its name, private key and key id."""

    name: str
    key: Ed25519PrivateKey
    key_id: str

    @classmethod
    def load(cls, settings: LeptonSettings, name: PrincipalName) -> Principal:
        """The principal's key: `LEPTON_PRINCIPAL_KEY_FILE` when set (must exist), else from the
        keys directory, created (0600 in a 0700 directory) on first use."""
        directory = principals_dir(settings)
        if settings.principal_key_file is None and not (directory / f"{name}.key").exists():
            private_dir(directory)
        key = load_signing_key(settings.principal_key_file, directory / f"{name}.key",
                               "LEPTON_PRINCIPAL_KEY_FILE")
        return cls(name, key, key_id(key.public_key()))

    def sign(self, data: bytes) -> str:
        """Sign `data` (base64 signature)."""
        return sign(self.key, data)


def canonical(domain: bytes, obj: dict[str, Any]) -> bytes:
    """The bytes a signed record's signature covers: its domain tag and the record's JSON
    object (sorted keys, compact) without its `signature`."""
    body = {k: v for k, v in obj.items() if k != "signature"}
    return domain + orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def canonical_decision(obj: dict[str, Any]) -> bytes:
    """The bytes a decision's signature covers (`canonical` under the decision domain)."""
    return canonical(DECISION_DOMAIN, obj)


def sign_decision(principal: Principal, decision: Decision) -> Decision:
    """`decision` with the principal's key id and its signature over the canonical encoding."""
    unsigned = decision.model_copy(update={"key_id": principal.key_id, "signature": None})
    signature = principal.sign(canonical_decision(unsigned.model_dump(mode="json")))
    return unsigned.model_copy(update={"signature": signature})


def verify_decision(public: Ed25519PublicKey, obj: dict[str, Any]) -> bool:
    """Whether the decision object (as received, parsed JSON) is signed by `public`."""
    signature = obj.get("signature")
    return isinstance(signature, str) and verify(public, canonical_decision(obj), signature)
