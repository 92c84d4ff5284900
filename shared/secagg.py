"""Double masking for a federation's secure aggregation (Bonawitz et al. 2017): the math both
the sites (services/trainer/site_secure.py) and the coordinator (services/federation/secure.py)
run. A survivor reveals its own self seed in the round's unmask step; a site lost between its
masked update and the unmask has its self seed, and its pairwise seeds with the sites that
dropped before their updates, rebuilt from the Shamir shares it sealed to its peers (a majority
of the round's sites); a site dropped before its update never has its self seed revealed.

Consumes a site's X25519 key pair and its peers' raw public keys, the federation id and round,
and a clipped float update with its sample count. Produces: the pairwise seed of two sites
(HKDF-SHA256 over their X25519 shared secret, bound to the federation, the round and both
names; the same at either end), the fixed-point update (value x count x 2^FRACTION_BITS as
int64, read as uint64), the masked update (plus PRG(self seed), a fresh random seed per round,
and for every peer j, +PRG(seed) if the site sorts before j, else -PRG(seed), all mod 2^64;
PRG = the ChaCha20 keystream read as uint64), Shamir shares (pycryptodome, GF(2^128), one
polynomial per 16-byte half) of the self seed and of each pairwise seed, bundled per peer and
each bundle sealed to its peer (AES-GCM under another HKDF key of the pair, bound to sender and
recipient), and back on the coordinator's side the seeds rebuilt from opened shares, the
survivors' self masks and the dropped peers' pairwise masks removed from a sum, and the sum in
floats.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import orjson
from Crypto.Protocol.SecretSharing import Shamir
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

FRACTION_BITS = 20
SCALE = float(2 ** FRACTION_BITS)
SEED_BYTES = 32
INFO = b"lepton.secagg.v1\n"
SHARE_INFO = b"lepton.secagg.share.v1\n"
SHARE_BYTES = 4 + SEED_BYTES  # the share's index (big-endian), then one 16-byte share per half
NONCE_BYTES = 12
Words = dict[str, npt.NDArray[np.uint64]]


class MaskingError(ValueError):
    """An update that cannot be masked or unmasked (overflow, bad key, shapes that differ)."""


def new_key() -> X25519PrivateKey:
    """A fresh X25519 key pair (one per site and federation; never leaves the site)."""
    return X25519PrivateKey.generate()


def public_text(key: X25519PrivateKey) -> str:
    """The raw public key as base64 (what travels in a signed SiteUpdate)."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def seed_text(seed: bytes) -> str:
    """A seed as base64 (an unmask answer)."""
    return base64.b64encode(seed).decode()


def from_text(text: str, size: int = SEED_BYTES) -> bytes:
    """Decode a base64 key or seed of `size` bytes."""
    try:
        raw = base64.b64decode(text.encode(), validate=True)
    except ValueError as error:
        raise MaskingError(f"not base64: {error}") from None
    if len(raw) != size:
        raise MaskingError(f"expected {size} bytes, got {len(raw)}")
    return raw


def check_public(text: str) -> None:
    """Refuse (MaskingError) a public key no agreement can use: not 32 bytes of base64, or a
    low-order point (X25519 with it gives the all-zero secret, which `cryptography` refuses)."""
    try:
        X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(from_text(text)))
    except ValueError as error:
        raise MaskingError(f"unusable agreement key: {error}") from None


def _agree(key: X25519PrivateKey, peer: str, peer_public: str) -> bytes:
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(from_text(peer_public)))
    except ValueError as error:
        raise MaskingError(f"bad agreement key of {peer}: {error}") from None


def _derive(secret: bytes, info: bytes, facts: dict[str, object]) -> bytes:
    label = info + orjson.dumps(facts, option=orjson.OPT_SORT_KEYS)
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=label
                ).derive(secret)


def pair_seed(key: X25519PrivateKey, own: str, peer: str, peer_public: str, federation: str,
              round_: int) -> bytes:
    """The seed shared by `own` and `peer` for one round (symmetric: seed_ij == seed_ji)."""
    if own == peer:
        raise MaskingError("a site has no pairwise seed with itself")
    return _derive(_agree(key, peer, peer_public), INFO, {
        "federation": federation, "round": round_, "sites": sorted((own, peer))})


def threshold(sites: int) -> int:
    """Shares that rebuild a self seed: a majority of the round's sites, at least two."""
    return max(2, sites // 2 + 1)


def split_seed(seed: bytes, sites: Sequence[str], own: str) -> dict[str, bytes]:
    """Shamir shares of `own`'s self seed for each other site of the round (share i for the
    i-th site in name order); any `threshold(len(sites))` of them rebuild it."""
    order = sorted(set(sites))
    if own not in order or len(seed) != SEED_BYTES:
        raise MaskingError("a self seed is shared among the round's sites, its own included")
    halves = [Shamir.split(threshold(len(order)), len(order), seed[i:i + 16])
              for i in (0, 16)]
    return {site: index.to_bytes(4, "big") + first + second
            for site, (index, first), (_, second) in zip(order, *halves, strict=True)
            if site != own}


def bundle_shares(self_seed: bytes, pair_seeds: Mapping[str, bytes], sites: Sequence[str],
                  own: str) -> dict[str, bytes]:
    """For each other site of the round, its share of `own`'s self seed followed by its share
    of each of `own`'s pairwise seeds (peers in name order): a lost survivor's pairwise seeds
    with a site that dropped before its update are rebuilt from these, as its self seed is."""
    peers = sorted(set(sites) - {own})
    if sorted(pair_seeds) != peers:
        raise MaskingError("a pairwise seed is shared for each of the round's other sites")
    splits = [split_seed(self_seed, sites, own)] + [
        split_seed(pair_seeds[peer], sites, own) for peer in peers]
    return {to: b"".join(split[to] for split in splits) for to in peers}


def bundle_bytes(sites: int) -> int:
    """The length of one recipient's bundle of shares in a round of `sites` sites."""
    return SHARE_BYTES * sites


def unbundle(bundle: bytes, sites: Sequence[str], sender: str) -> tuple[bytes, dict[str, bytes]]:
    """A bundle `sender` made: its share of the self seed, and of the pairwise seed with each
    other site (MaskingError when its length does not fit the round)."""
    peers = sorted(set(sites) - {sender})
    if len(bundle) != bundle_bytes(len(peers) + 1):
        raise MaskingError(f"a bundle of {len(bundle)} bytes from {sender} does not fit a "
                           f"round of {len(peers) + 1} sites")
    parts = [bundle[i:i + SHARE_BYTES] for i in range(0, len(bundle), SHARE_BYTES)]
    return parts[0], dict(zip(peers, parts[1:], strict=True))


def combine_seed(shares: Iterable[bytes], sites: int) -> bytes:
    """The self seed rebuilt from at least `threshold(sites)` of its shares (MaskingError with
    fewer, or with malformed or repeated ones; a wrong share gives a wrong seed, which the
    coordinator's norm bound refuses)."""
    parts = [(int.from_bytes(s[:4], "big"), s[4:20], s[20:]) for s in shares
             if len(s) == SHARE_BYTES]
    indices = {index for index, _, _ in parts}
    if len(indices) < threshold(sites) or len(indices) != len(parts) or not indices <= set(
            range(1, sites + 1)):
        raise MaskingError(f"{len(indices)} distinct well-formed shares of {len(parts)} "
                           f"given for a round of {sites} sites; {threshold(sites)} are needed")
    return b"".join(Shamir.combine([(i, half[h]) for i, *half in parts]) for h in (0, 1))


def _share_key(secret: bytes, federation: str, round_: int, sender: str, recipient: str
               ) -> AESGCM:
    """A key per federation, round and direction: a share opens under no other."""
    return AESGCM(_derive(secret, SHARE_INFO, {"federation": federation, "round": round_,
                                                "from": sender, "to": recipient}))


def seal_share(key: X25519PrivateKey, own: str, peer: str, peer_public: str, federation: str,
               round_: int, share: bytes) -> str:
    """`share` (or a bundle of shares) sealed from `own` to `peer` (AES-GCM, random nonce),
    base64: only `peer` opens it; the coordinator forwards it."""
    aead = _share_key(_agree(key, peer, peer_public), federation, round_, own, peer)
    nonce = secrets.token_bytes(NONCE_BYTES)
    return base64.b64encode(nonce + aead.encrypt(nonce, share, None)).decode()


def open_share(key: X25519PrivateKey, own: str, sender: str, sender_public: str,
               federation: str, round_: int, sealed: str, size: int = SHARE_BYTES) -> bytes:
    """The `size` bytes (a share, or a bundle of them) `sender` sealed to `own` (MaskingError
    when they do not open)."""
    aead = _share_key(_agree(key, sender, sender_public), federation, round_, sender, own)
    raw = from_text(sealed, NONCE_BYTES + size + 16)
    try:
        return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None)
    except InvalidTag:
        raise MaskingError(f"the share {sender} sealed to {own} does not open") from None


def new_seed() -> bytes:
    """A fresh self-mask seed (one per site and round; revealed only if the site survives)."""
    return secrets.token_bytes(SEED_BYTES)


def keystream(seed: bytes, shapes: Mapping[str, tuple[int, ...]]) -> Words:
    """ChaCha20's keystream under `seed` as uint64 words, cut into `shapes` in name order."""
    sizes = {name: int(np.prod(shape, dtype=np.int64)) for name, shape in shapes.items()}
    total = sum(sizes.values())
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    words = np.frombuffer(encryptor.update(b"\0" * (8 * total)), dtype="<u8")
    out: Words = {}
    offset = 0
    for name in sorted(shapes):
        out[name] = words[offset:offset + sizes[name]].astype(np.uint64).reshape(shapes[name])
        offset += sizes[name]
    return out


def quantize(update: Mapping[str, npt.NDArray[np.floating]], count: int, sites: int) -> Words:
    """round(value x count x 2^FRACTION_BITS) as uint64 words; refuses values whose sum over
    `sites` sites could overflow int64."""
    limit = float(2 ** 63) / max(1, sites)
    out: Words = {}
    for name, value in update.items():
        scaled = np.rint(np.asarray(value, dtype=np.float64) * float(count) * SCALE)
        if not np.all(np.isfinite(scaled)) or np.any(np.abs(scaled) >= limit):
            raise MaskingError(f"{name}: the fixed-point update overflows")
        out[name] = scaled.astype(np.int64).view(np.uint64)
    return out


def dequantize(words: Mapping[str, npt.NDArray[np.uint64]]) -> dict[str, npt.NDArray[np.float64]]:
    """Signed fixed-point words back to floats (value x count)."""
    return {k: np.asarray(v, dtype=np.uint64).view(np.int64).astype(np.float64) / SCALE
            for k, v in words.items()}


def _shapes(words: Mapping[str, npt.NDArray[np.uint64]]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(d) for d in v.shape) for k, v in words.items()}


def _shift(words: Words, seed: bytes, plus: bool) -> Words:
    """`words` plus (or minus) PRG(seed), mod 2^64."""
    stream = keystream(seed, _shapes(words))
    return {k: v + stream[k] if plus else v - stream[k] for k, v in words.items()}


def mask(words: Mapping[str, npt.NDArray[np.uint64]], own: str,
         seeds: Mapping[str, bytes], self_seed: bytes) -> Words:
    """The masked update: plus PRG(self seed), and plus PRG(seed) for each peer sorting after
    `own`, minus otherwise."""
    out = _shift({k: np.array(v, dtype=np.uint64) for k, v in words.items()}, self_seed, True)
    for peer, seed in sorted(seeds.items()):
        out = _shift(out, seed, own < peer)
    return out


def add(total: Words | None, words: Mapping[str, npt.NDArray[np.uint64]]) -> Words:
    """`total` + `words` mod 2^64 (same names and shapes)."""
    if total is None:
        return {k: np.array(v, dtype=np.uint64) for k, v in words.items()}
    if _shapes(total) != _shapes(words):
        raise MaskingError("masked updates with different tensors or shapes")
    return {k: total[k] + np.asarray(words[k], dtype=np.uint64) for k in total}


def remove_masks(total: Words, self_seeds: Iterable[bytes],
                 recovered: Iterable[tuple[str, str, bytes]]) -> Words:
    """The sum without the survivors' self masks and the masks that survivors added for
    dropped peers: (survivor, dropped peer, their seed) each."""
    out = dict(total)
    for seed in self_seeds:
        out = _shift(out, seed, False)
    for survivor, dropped, seed in recovered:
        out = _shift(out, seed, survivor > dropped)
    return out
