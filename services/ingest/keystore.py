"""Per-subject data keys: minted by ingest, wrapped by a master key from a `Kms`
(`services/ingest/keyring.py`), stored wrapped in Redis (`<prefix>crypto:datakey:<data key id>`)
with a durable copy on disk (`wrapped_keys.py`), and destroyed by `lepton forget`
(crypto-shredding).

Only ingest and the operator's `lepton` CLI (`forget`, `state rebuild`, `keys`, `dlq`) hold the
master keyring; governance, the trainer and serving never construct a `KeyStore`.
Unwrapped keys are cached in-process in a bounded LRU (`key_cache.py`) whose entries live at
most `cache_ttl` seconds, which bounds how long a running process can still use a key after
`forget`. Data key ids and the forgotten set are keyed by the subject's pseudonym
(`shared.pseudonym`), so raw ids and pseudonyms name the same key. The ciphers themselves are
in `ciphers.py`.

Consumes: the keyring, the platform key (`shared.tokens`), Redis, `<keys dir>/datakeys`.
Produces: `DataKey`s, plaintexts of ciphertexts and sealed values, wrapped keys in Redis.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.ingest.ciphers import DataKey, parse_ciphertext, parse_sealed
from services.ingest.key_cache import KeyCache
from services.ingest.keyring import Kms, LocalKms
from services.ingest.wrapped_keys import WrappedKeys
from shared.config import LeptonSettings
from shared.crypto import CryptoError, KeyDestroyed, KeyedHash, KmsError, b64d, b64e
from shared.pseudonym import Pseudonymizer
from shared.state import forgotten_key, make_redis, rkey
from shared.tokens import PlatformKey, load_platform_key

# Mint a batch's data keys, each unless its subject was forgotten. KEYS: the forgotten set,
# then each key's name; ARGV: each key's subject and record. Returns per key the record that
# won (ours, or one minted first by another process), or nil when the subject was forgotten.
_MINT = """
local out = {}
for i = 2, #KEYS do
  local subject, record = ARGV[2 * i - 3], ARGV[2 * i - 2]
  if redis.call('SISMEMBER', KEYS[1], subject) == 1 then out[i - 1] = false
  elseif redis.call('SET', KEYS[i], record, 'NX') then out[i - 1] = record
  else out[i - 1] = redis.call('GET', KEYS[i]) end
end
return out
"""
# Replace a wrapped key only if nobody changed (or deleted) it meanwhile.
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end
return 0
"""
# Delete a wrapped key only if it is still the given record.
_UNSET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class KeyStore:
    """Per-subject data keys in Redis, wrapped by the master keyring; open, restore, shred."""

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
        self.redis = client or make_redis(settings)
        platform = platform or load_platform_key(settings)
        self._id_hash = KeyedHash(platform.derive("data-key-id"))
        self.pseudonyms = Pseudonymizer(platform.derive("subject-pseudonym"))
        self.key_prefix = rkey(settings, "crypto", "datakey", "")
        self._forgotten = forgotten_key(settings)
        self.files = WrappedKeys(settings.keys_path() / "datakeys")
        self._cache = KeyCache(cache_size, cache_ttl)
        self._mint = self.redis.register_script(_MINT)
        self.swap = self.redis.register_script(_SWAP)
        self._unset = self.redis.register_script(_UNSET)

    def data_key_id(self, subject_id: str) -> str:
        """The (keyed, non-reversible) id of a subject's data key (raw id or pseudonym)."""
        return self._id_hash.hexdigest(self.pseudonyms.normal(subject_id).encode())[:24]

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
        records = self.redis.mget([self.key_prefix + key_id for _, key_id in missing])
        to_mint = []
        found: list[tuple[str, str, bytes]] = []
        restored: list[tuple[str, bytes]] = []
        reforgotten: list[str] = []
        absent = [key_id for (_, key_id), record in zip(missing, records, strict=True)
                  if record is None]
        on_disk, tombstoned = self.files.lookup(absent) if absent else ({}, set())
        for (subject, key_id), record in zip(missing, records, strict=True):
            if record is None:  # not in Redis: the durable copy decides (restore or forgotten)
                record = on_disk.get(key_id)
                if record is not None:
                    restored.append((key_id, record))
                elif key_id in tombstoned:
                    failures[subject] = "forgotten"
                    reforgotten.append(self.pseudonyms.normal(subject))
                    continue
                else:
                    to_mint.append((subject, key_id))
                    continue
            found.append((subject, key_id, record))
        _, shredded = self._restore(restored)
        if reforgotten:
            self.redis.sadd(self._forgotten, *reforgotten)
        for subject, key_id, record in found:
            if key_id in shredded:
                failures[subject] = "forgotten"
            else:
                self._open_into(subject, key_id, record, keys, failures)
        if not create:
            failures.update((subject, "missing") for subject, _ in to_mint)
        elif to_mint:
            self._mint_into(to_mint, keys, failures)
        return keys, failures

    def _mint_into(self, to_mint: list[tuple[str, str]], keys: dict[str, DataKey],
                   failures: dict[str, str]) -> None:
        """Mint keys for (subject, key id) pairs in one Redis call, keep the winning records on
        disk (one transaction) and open them (ours from the raw key, without unwrapping it
        again)."""
        raws = [AESGCM.generate_key(256) for _ in to_mint]
        ours = [self.wrap(key_id, raw) for (_, key_id), raw in zip(to_mint, raws, strict=True)]
        args: list[str | bytes] = []
        for (subject, _), record in zip(to_mint, ours, strict=True):
            args += [self.pseudonyms.normal(subject), record]
        won = self._mint(keys=[self._forgotten, *(self.key_prefix + key_id
                                                  for _, key_id in to_mint)], args=args)
        self.files.put_many((key_id, record) for (_, key_id), record
                            in zip(to_mint, won, strict=True) if record is not None)
        for (subject, key_id), raw, mine, record in zip(to_mint, raws, ours, won, strict=True):
            if record is None:
                failures[subject] = "forgotten"
                continue
            self._open_into(subject, key_id, record, keys, failures,
                            raw if record == mine else None)

    def encrypt_for(self, subject_id: str, event_id: str, field: str, plaintext: str) -> str:
        """Encrypt for a subject, minting its key if needed (KeyDestroyed when forgotten)."""
        keys, failures = self.data_keys([subject_id])
        if subject_id not in keys:
            raise KeyDestroyed(f"no data key for this subject ({failures[subject_id]})")
        return keys[subject_id].encrypt(event_id, field, plaintext)

    def decrypt_field(self, event_id: str, field: str, ciphertext: str) -> str:
        """Decrypt a field of event `event_id`; CryptoError/KeyDestroyed when it can't."""
        key_id, blob, aad = parse_ciphertext(ciphertext, event_id, field)
        return self._key(key_id).decrypt(blob, aad).decode()

    def open_bytes(self, label: str, sealed: bytes) -> bytes:
        """Inverse of `DataKey.seal`; CryptoError/KeyDestroyed when it can't."""
        key_id, blob, aad = parse_sealed(label, sealed)
        return self._key(key_id).decrypt(blob, aad)

    def _key(self, key_id: str) -> DataKey:
        key = self._cache.get(key_id)
        if key is not None:
            return key
        record = self.redis.get(self.key_prefix + key_id)
        if record is None and (record := self.files.get(key_id)) is not None \
                and self._restore([(key_id, record)])[1]:
            record = None
        if record is None:
            raise KeyDestroyed("data key destroyed (subject forgotten) or never existed")
        try:
            return self._open(key_id, record)
        except KmsError as error:
            raise CryptoError(str(error)) from None

    def _restore(self, items: list[tuple[str, bytes]]) -> tuple[set[str], set[str]]:
        """Put disk copies back into Redis (SET NX); a key whose tombstone appeared meanwhile
        (a `forget` racing with this) is taken out again. Returns (key ids put back, key ids
        taken out)."""
        if not items:
            return set(), set()
        pipe = self.redis.pipeline(transaction=False)
        for key_id, record in items:
            pipe.set(self.key_prefix + key_id, record, nx=True)
        done = {key_id for (key_id, _), ok in zip(items, pipe.execute(), strict=True) if ok}
        shredded = {key_id for key_id, _ in items if self.files.forgotten(key_id)}
        for key_id, record in items:
            if key_id in shredded:
                self._unset(keys=[self.key_prefix + key_id], args=[record])
        return done - shredded, shredded

    def restore(self) -> tuple[int, int]:
        """Put every disk copy missing from Redis back (SET NX), and write the disk copy of
        every Redis key that lacks one; (restored into Redis, written to disk)."""
        on_disk = dict(self.files.scan())
        restored, _ = self._restore(list(on_disk.items()))
        lacking = dict(r for r in self.records() if r[0] not in on_disk)
        _, tombstoned = self.files.lookup(list(lacking))
        copies = [(key_id, record) for key_id, record in lacking.items()
                  if key_id not in tombstoned]
        return len(restored), len(copies) if self.files.put_many(copies) else 0

    def is_forgotten(self, subject_id: str) -> bool:
        """True once `forget(subject_id)` ran."""
        return bool(self.redis.sismember(self._forgotten, self.pseudonyms.normal(subject_id)))

    def forget(self, subject_id: str) -> bool:
        """Crypto-shred: leave the tombstone on disk (deleting the disk copy), then mark the
        subject forgotten and delete its data key in Redis; True if a key existed in either.
        The tombstone comes first so that a restore racing with this sees it."""
        key_id = self.data_key_id(subject_id)
        on_disk = self.files.destroy(key_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(self._forgotten, self.pseudonyms.normal(subject_id))
        pipe.delete(self.key_prefix + key_id)
        _, deleted = pipe.execute()
        self._cache.pop(key_id)
        return bool(deleted) or on_disk

    def records(self) -> Iterable[tuple[str, bytes]]:
        """(data key id, wrapped record) of every data key in Redis."""
        names: list[str] = []
        pattern = _glob_escape(self.key_prefix) + "*"
        for raw in self.redis.scan_iter(match=pattern, count=1000):
            names.append(raw.decode())
            if len(names) >= 500:
                yield from self._fetch(names)
                names = []
        yield from self._fetch(names)

    def _fetch(self, names: list[str]) -> Iterable[tuple[str, bytes]]:
        if not names:
            return
        for name, record in zip(names, self.redis.mget(names), strict=True):
            if record is not None:
                yield name[len(self.key_prefix):], record

    def wrap(self, key_id: str, key: bytes) -> bytes:
        """The stored record of a raw data key: `<master id>.<wrapped>`."""
        master_id, wrapped = self.kms.wrap(key, _wrap_aad(key_id))
        return f"{master_id}.{b64e(wrapped)}".encode()

    def unwrap(self, key_id: str, record: bytes) -> bytes:
        """The raw data key of a stored record (KmsError when it cannot be unwrapped)."""
        master_id, _, wrapped = record.decode().partition(".")
        try:
            blob = b64d(wrapped)
        except ValueError:
            raise KmsError("stored data key record is malformed") from None
        return self.kms.unwrap(master_id, blob, _wrap_aad(key_id))

    def _open(self, key_id: str, record: bytes, raw: bytes | None = None) -> DataKey:
        """The key of a stored record, cached (from `raw` when the caller just wrapped it)."""
        key = DataKey.from_raw(key_id, master_of(record),
                               raw if raw is not None else self.unwrap(key_id, record))
        self._cache.put(key)
        return key

    def _open_into(self, subject: str, key_id: str, record: bytes, keys: dict[str, DataKey],
                   failures: dict[str, str], raw: bytes | None = None) -> None:
        try:
            keys[subject] = self._open(key_id, record, raw)
        except KmsError:
            failures[subject] = "key_unavailable"


def master_of(record: bytes) -> str:
    """The id of the master key a stored record is wrapped under."""
    return record.split(b".", 1)[0].decode()


def _wrap_aad(key_id: str) -> bytes:
    return b"lepton-datakey\0" + key_id.encode()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
