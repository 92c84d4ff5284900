"""Ed25519 signing keys on disk (model artifacts, audit checkpoints): create, load, sign, verify."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.secretfiles import read_or_create


def key_id(public: Ed25519PublicKey) -> str:
    """A short stable id for a public key: the first 16 hex digits of its sha256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_private_key(path: Path) -> Ed25519PrivateKey:
    """Load a PEM private key, creating one (0600 in a 0700 directory, race-free, with its .pub
    beside it) if absent."""
    pem = read_or_create(path, lambda: Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    public = public_path(path)
    if not public.exists():
        tmp = public.with_name(f".{public.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            tmp.write_bytes(public_pem(key.public_key()))
        except OSError as error:  # a read-only keys mount: the .pub is derivable when needed
            if error.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            return key
        tmp.replace(public)
    return key


def load_signing_key(given: Path | None, default: Path, variable: str) -> Ed25519PrivateKey:
    """The key in `given` (a read-only secret that must exist, named by setting `variable`),
    else the one in `default`, created on first use."""
    if given is not None and not given.is_file():
        raise FileNotFoundError(f"{variable} {given} does not exist")
    return load_or_create_private_key(given or default)


def public_path(private_path: Path) -> Path:
    """Where the public key of `private_path` is kept."""
    return private_path.with_suffix(".pub")


def public_pem(public: Ed25519PublicKey) -> bytes:
    """PEM encoding of a public key."""
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM public key."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    """Sign `data`; the signature as base64 text."""
    return base64.b64encode(key.sign(data)).decode()


def verify(public: Ed25519PublicKey, data: bytes, signature: str) -> bool:
    """True when `signature` (base64) is valid for `data` under `public`."""
    try:
        public.verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True
