"""PII protection shared by every stage: AES-256-GCM field encryption under per-subject data
keys, keyed-hash tokens for join keys, and crypto-shredding.

Data keys are random 256-bit AES keys, one per data subject, wrapped by a master key from a
`shared.keyring.Kms` and stored wrapped in Redis (`<prefix>crypto:datakey:<data key id>`);
unwrapped keys are cached in-process in a bounded LRU whose entries live at most `cache_ttl`
seconds, which bounds how long a running process can still use a key after `forget`.
Ciphertext text: `enc1:<master key id>:<data key id>:<base64url(nonce | ciphertext | tag)>`;
the associated data binds that header, the event id and the field name. `seal_bytes` seals
arbitrary bytes (dead letters) in the same header format, binary. Data key ids and the forgotten
set are keyed by the subject's pseudonym (`shared.pseudonym`), so raw ids and pseudonyms name
the same key.
Tokens (`pii: tokenize`): `tok2:<data key id>:<base64url(HMAC-SHA256(token key, field NUL
value)[:18])>`, where the token key is derived from the subject's own data key: equal values of
one subject give equal tokens (group by card within a subject), the same value of two subjects
gives unrelated tokens (no cross-subject join), and `forget` destroys the key, so the subject's
tokens can no longer be reproduced or linked to anything. Nothing holds a key that tokenizes
for every subject.

Consumes: key material under `settings.keys_path()` (or `LEPTON_MASTER_KEYS`,
`LEPTON_TOKEN_KEY`), Redis. Produces: ciphertexts, tokens, wrapped keys in Redis.
"""

from __future__ import annotations

import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.config import LeptonSettings
from shared.keyfiles import WrappedKeyFiles
from shared.keyring import Kms, KmsError, LocalKms, b64d, b64e
from shared.pseudonym import Pseudonymizer
from shared.state import make_redis, rkey
from shared.tokens import PlatformKey, load_platform_key

__all__ = [
    "TOKEN_VERSION", "CryptoError", "DataKey", "KeyDestroyed", "KeyStore", "PlatformKey",
    "RewrapReport", "is_ciphertext", "is_token", "load_platform_key",
]

CIPHER_VERSION = "enc1"
TOKEN_VERSION = "tok2"  # noqa: S105 (a format tag)
NONCE_BYTES = 12

# Mint a data key unless the subject was forgotten; returns the record that won (or nil).
_MINT = """
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return false end
if redis.call('SET', KEYS[1], ARGV[2], 'NX') then return ARGV[2] end
return redis.call('GET', KEYS[1])
"""
# Replace a wrapped key only if nobody changed (or deleted) it meanwhile.
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end
return 0
"""


class CryptoError(ValueError):
    """A ciphertext is malformed, was tampered with, or belongs to another event or field."""


class KeyDestroyed(CryptoError):
    """The ciphertext's data key no longer exists: its subject was forgotten."""


def is_ciphertext(value: object) -> bool:
    """True for a string in this module's ciphertext format."""
    return isinstance(value, str) and value.startswith(CIPHER_VERSION + ":")


def is_token(value: object) -> bool:
    """True for a string in this module's token format."""
    return isinstance(value, str) and value.startswith(TOKEN_VERSION + ":")


@dataclass(frozen=True, slots=True)
class DataKey:
    """An unwrapped data key and the subject's token key derived from it (never printed)."""

    key_id: str
    master_id: str
    aead: AESGCM
    token_key: bytes = field(repr=False)


@dataclass(frozen=True)
class RewrapReport:
    """What a re-wrap pass did."""

    active: str
    rewrapped: int
    current: int
    changed_meanwhile: int
    failed: int


class _Cache:
    """A bounded LRU of data keys whose entries expire `ttl` seconds after they were fetched."""

    def __init__(self, size: int, ttl: float) -> None:
        self._items: OrderedDict[str, tuple[float, DataKey]] = OrderedDict()
        self._size = size
        self._ttl = ttl

    def get(self, key_id: str) -> DataKey | None:
        item = self._items.get(key_id)
        if item is None:
            return None
        if item[0] < time.monotonic():
            del self._items[key_id]
            return None
        self._items.move_to_end(key_id)
        return item[1]

    def put(self, key: DataKey) -> None:
        self._items[key.key_id] = (time.monotonic() + self._ttl, key)
        self._items.move_to_end(key.key_id)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key_id: str) -> None:
        self._items.pop(key_id, None)


class KeyStore:
    """Per-subject data keys in Redis, wrapped by the master keyring; encrypt, decrypt, shred."""

    def __init__(
        self,
        settings: LeptonSettings,
        *,
        kms: Kms | None = None,
        client: redis.Redis[bytes] | None = None,
        platform: PlatformKey | None = None,
        cache_size: int = 10_000,
        cache_ttl: float = 30.0,
    ) -> None:
        self.kms: Kms = kms or LocalKms.from_settings(settings)
        self._redis = client or make_redis(settings)
        platform = platform or load_platform_key(settings)
        self._id_key = platform.derive("data-key-id")
        self.pseudonyms = Pseudonymizer(platform.derive("subject-pseudonym"))
        self._key_prefix = rkey(settings, "crypto", "datakey", "")
        self._forgotten = rkey(settings, "policy", "forgotten")
        self.files = WrappedKeyFiles(settings.keys_path() / "datakeys")
        self._cache = _Cache(cache_size, cache_ttl)
        self._mint = self._redis.register_script(_MINT)
        self._swap = self._redis.register_script(_SWAP)

    def data_key_id(self, subject_id: str) -> str:
        """The (keyed, non-reversible) id of a subject's data key (raw id or pseudonym)."""
        subject = self.pseudonyms.normal(subject_id).encode()
        return hmac.digest(self._id_key, subject, "sha256").hex()[:24]

    def data_keys(
        self, subject_ids: Iterable[str], *, create: bool = True
    ) -> tuple[dict[str, DataKey], dict[str, str]]:
        """Keys for many subjects in at most two Redis round trips: (keys, failures).

        Missing keys are minted when `create`, except for forgotten subjects (failure
        "forgotten"); a key that cannot be unwrapped fails with "key_unavailable".
        """
        keys: dict[str, DataKey] = {}
        failures: dict[str, str] = {}
        missing: list[tuple[str, str]] = []
        for subject in dict.fromkeys(subject_ids):
            key_id = self.data_key_id(subject)
            cached = self._cache.get(key_id)
            if cached is not None:
                keys[subject] = cached
            else:
                missing.append((subject, key_id))
        if not missing:
            return keys, failures
        records = self._redis.mget([self._key_prefix + key_id for _, key_id in missing])
        to_mint = []
        restored: list[tuple[str, bytes]] = []
        reforgotten: list[str] = []
        for (subject, key_id), record in zip(missing, records, strict=True):
            if record is None:  # not in Redis: the durable copy decides (restore or forgotten)
                record = self.files.get(key_id)
                if record is not None:
                    restored.append((key_id, record))
                elif self.files.forgotten(key_id):
                    failures[subject] = "forgotten"
                    reforgotten.append(self.pseudonyms.normal(subject))
                    continue
                else:
                    to_mint.append((subject, key_id))
                    continue
            self._open_into(subject, key_id, record, keys, failures)
        if restored or reforgotten:
            pipe = self._redis.pipeline(transaction=False)
            for key_id, record in restored:
                pipe.set(self._key_prefix + key_id, record, nx=True)
            if reforgotten:
                pipe.sadd(self._forgotten, *reforgotten)
            pipe.execute()
        if not create:
            failures.update((subject, "missing") for subject, _ in to_mint)
        elif to_mint:
            pipe = self._redis.pipeline(transaction=False)
            for subject, key_id in to_mint:
                self._mint(keys=[self._key_prefix + key_id, self._forgotten],
                           args=[self.pseudonyms.normal(subject),
                                 self._seal(key_id, AESGCM.generate_key(256))],
                           client=pipe)
            for (subject, key_id), record in zip(to_mint, pipe.execute(), strict=True):
                if record is None:
                    failures[subject] = "forgotten"
                else:
                    self.files.put(key_id, record)
                    self._open_into(subject, key_id, record, keys, failures)
        return keys, failures

    def encrypt_field(self, key: DataKey, event_id: str, field: str, plaintext: str) -> str:
        """Encrypt one field value of one event under `key`."""
        header = f"{CIPHER_VERSION}:{key.master_id}:{key.key_id}"
        nonce = os.urandom(NONCE_BYTES)
        sealed = key.aead.encrypt(nonce, plaintext.encode(), _aad(header, event_id, field))
        return f"{header}:{b64e(nonce + sealed)}"

    def tokenize(self, key: DataKey, field: str, value: str) -> str:
        """The subject's token of `value` in `field` (keyed by its data key)."""
        digest = hmac.digest(key.token_key, f"{field}\0{value}".encode(), "sha256")
        return f"{TOKEN_VERSION}:{key.key_id}:{b64e(digest[:18])}"

    def encrypt_for(self, subject_id: str, event_id: str, field: str, plaintext: str) -> str:
        """Encrypt for a subject, minting its key if needed (KeyDestroyed when forgotten)."""
        keys, failures = self.data_keys([subject_id])
        if subject_id not in keys:
            raise KeyDestroyed(f"no data key for this subject ({failures[subject_id]})")
        return self.encrypt_field(keys[subject_id], event_id, field, plaintext)

    def decrypt_field(self, envelope_event_id: str, field: str, ciphertext: str) -> str:
        """Decrypt a field of event `envelope_event_id`; CryptoError/KeyDestroyed when it can't."""
        version, master_id, key_id, blob = _split(ciphertext)
        header = f"{version}:{master_id}:{key_id}"
        return self._decrypt(key_id, blob, _aad(header, envelope_event_id, field)).decode()

    def seal_bytes(self, key: DataKey, label: str, data: bytes) -> bytes:
        """Encrypt arbitrary bytes (binary: `enc1:<master>:<data key>:` + nonce|ct|tag)."""
        header = f"{CIPHER_VERSION}:{key.master_id}:{key.key_id}"
        nonce = os.urandom(NONCE_BYTES)
        return (f"{header}:".encode() + nonce
                + key.aead.encrypt(nonce, data, _aad(header, label, "bytes")))

    def open_bytes(self, label: str, sealed: bytes) -> bytes:
        """Inverse of `seal_bytes`; CryptoError/KeyDestroyed when it can't."""
        parts = sealed.split(b":", 3)
        if len(parts) != 4 or parts[0] != CIPHER_VERSION.encode() or not parts[2]:
            raise CryptoError(f"not a sealed {CIPHER_VERSION} value")
        if len(parts[3]) < NONCE_BYTES + 16:
            raise CryptoError("sealed value is truncated")
        header = b":".join(parts[:3]).decode("ascii", "replace")
        return self._decrypt(parts[2].decode("ascii", "replace"), parts[3],
                             _aad(header, label, "bytes"))

    def key_id_of(self, sealed: bytes | str) -> tuple[str, str]:
        """(master key id, data key id) named by a ciphertext or sealed value."""
        text = sealed if isinstance(sealed, str) else sealed[:120].decode("ascii", "replace")
        parts = text.split(":", 3)
        if len(parts) < 4 or parts[0] != CIPHER_VERSION:
            raise CryptoError(f"not a {CIPHER_VERSION} ciphertext")
        return parts[1], parts[2]

    def _decrypt(self, key_id: str, blob: bytes, aad: bytes) -> bytes:
        key = self._cache.get(key_id)
        if key is None:
            record = self._redis.get(self._key_prefix + key_id)
            if record is None and (record := self.files.get(key_id)) is not None:
                self._redis.set(self._key_prefix + key_id, record, nx=True)
            if record is None:
                raise KeyDestroyed("data key destroyed (subject forgotten) or never existed")
            try:
                key = self._open(key_id, record)
            except KmsError as error:
                raise CryptoError(str(error)) from None
        try:
            return key.aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise CryptoError("ciphertext failed authentication for this event and field") from None

    def restore(self) -> tuple[int, int]:
        """Put every disk copy missing from Redis back (SET NX), and write the disk copy of
        every Redis key that lacks one; (restored into Redis, written to disk)."""
        on_disk = dict(self.files.scan())
        pipe = self._redis.pipeline(transaction=False)
        for key_id, record in on_disk.items():
            pipe.set(self._key_prefix + key_id, record, nx=True)
        restored = sum(bool(done) for done in pipe.execute())
        written = 0
        for name, record in self._scan_records():
            key_id = name[len(self._key_prefix):]
            if key_id not in on_disk and not self.files.forgotten(key_id):
                written += self.files.put(key_id, record)
        return restored, written

    def is_forgotten(self, subject_id: str) -> bool:
        """True once `forget(subject_id)` ran."""
        return bool(self._redis.sismember(self._forgotten, self.pseudonyms.normal(subject_id)))

    def forget(self, subject_id: str) -> bool:
        """Crypto-shred: mark the subject forgotten and delete its data key in Redis and on disk
        (leaving a tombstone there); True if a key existed in either."""
        key_id = self.data_key_id(subject_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.sadd(self._forgotten, self.pseudonyms.normal(subject_id))
        pipe.delete(self._key_prefix + key_id)
        _, deleted = pipe.execute()
        on_disk = self.files.destroy(key_id)
        self._cache.pop(key_id)
        return bool(deleted) or on_disk

    def master_key_usage(self) -> dict[str, int]:
        """How many data keys each master key currently wraps (Redis and the disk copies)."""
        records = dict(self.files.scan())
        records.update((name[len(self._key_prefix):], record)
                       for name, record in self._scan_records())
        usage: dict[str, int] = {}
        for record in records.values():
            master_id = record.split(b".", 1)[0].decode()
            usage[master_id] = usage.get(master_id, 0) + 1
        return usage

    def rewrap(self) -> RewrapReport:
        """Re-wrap every data key not under the active master key (safe while others run)."""
        active = self.kms.active_key_id()
        rewrapped = current = changed = failed = 0
        batch: list[tuple[str, bytes, bytes]] = []

        def flush() -> None:
            nonlocal rewrapped, changed
            pipe = self._redis.pipeline(transaction=False)
            for name, old, new in batch:
                self._swap(keys=[name], args=[old, new], client=pipe)
            results = pipe.execute()
            for (name, _, new), swapped in zip(batch, results, strict=True):
                if swapped:
                    self.files.put(name[len(self._key_prefix):], new)
            rewrapped += sum(results)
            changed += len(results) - sum(results)
            batch.clear()

        for name, record in self._scan_records():
            key_id = name[len(self._key_prefix):]
            if record.split(b".", 1)[0].decode() == active:
                current += 1
                continue
            try:
                key = self._unwrap(key_id, record)
            except KmsError:
                failed += 1
                continue
            batch.append((name, record, self._seal(key_id, key)))
            if len(batch) >= 500:
                flush()
        if batch:
            flush()
        for key_id, record in self.files.scan():  # disk copies not (or no longer) in Redis
            if record.split(b".", 1)[0].decode() == active:
                continue
            live = self._redis.get(self._key_prefix + key_id)
            if live is not None and live.split(b".", 1)[0].decode() == active:
                self.files.put(key_id, live)
                continue
            try:
                self.files.put(key_id, self._seal(key_id, self._unwrap(key_id, record)))
                rewrapped += live is None
            except KmsError:
                failed += 1
        return RewrapReport(active, rewrapped, current, changed, failed)

    def _scan_records(self) -> Iterable[tuple[str, bytes]]:
        names: list[str] = []
        pattern = _glob_escape(self._key_prefix) + "*"
        for raw in self._redis.scan_iter(match=pattern, count=1000):
            names.append(raw.decode())
            if len(names) >= 500:
                yield from self._fetch(names)
                names = []
        yield from self._fetch(names)

    def _fetch(self, names: list[str]) -> Iterable[tuple[str, bytes]]:
        if not names:
            return
        for name, record in zip(names, self._redis.mget(names), strict=True):
            if record is not None:
                yield name, record

    def _seal(self, key_id: str, key: bytes) -> bytes:
        master_id, wrapped = self.kms.wrap(key, _wrap_aad(key_id))
        return f"{master_id}.{b64e(wrapped)}".encode()

    def _unwrap(self, key_id: str, record: bytes) -> bytes:
        master_id, _, wrapped = record.decode().partition(".")
        try:
            blob = b64d(wrapped)
        except ValueError:
            raise KmsError("stored data key record is malformed") from None
        return self.kms.unwrap(master_id, blob, _wrap_aad(key_id))

    def _open(self, key_id: str, record: bytes) -> DataKey:
        raw = self._unwrap(key_id, record)
        key = DataKey(key_id, record.split(b".", 1)[0].decode(), AESGCM(raw),
                      hmac.digest(raw, b"lepton-token-key", "sha256"))
        self._cache.put(key)
        return key

    def _open_into(self, subject: str, key_id: str, record: bytes,
                   keys: dict[str, DataKey], failures: dict[str, str]) -> None:
        try:
            keys[subject] = self._open(key_id, record)
        except KmsError:
            failures[subject] = "key_unavailable"


def _aad(header: str, event_id: str, field: str) -> bytes:
    return f"{header}\0{event_id}\0{field}".encode()


def _wrap_aad(key_id: str) -> bytes:
    return b"lepton-datakey\0" + key_id.encode()


def _split(ciphertext: str) -> tuple[str, str, str, bytes]:
    parts = ciphertext.split(":")
    if len(parts) != 4 or parts[0] != CIPHER_VERSION or not parts[1] or not parts[2]:
        raise CryptoError(f"not a {CIPHER_VERSION} ciphertext")
    try:
        blob = b64d(parts[3])
    except ValueError:
        raise CryptoError("ciphertext body is not base64url") from None
    if len(blob) < NONCE_BYTES + 16:
        raise CryptoError("ciphertext is truncated")
    return parts[0], parts[1], parts[2], blob


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
