"""RFC 6962 test vectors (from transparency-dev/merkle) and its corruption probes."""

from __future__ import annotations

import hashlib

import pytest

from services.governance.merkle import (
    EMPTY_ROOT,
    CompactRange,
    ProofError,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_inclusion,
    root_of,
    verify_consistency,
    verify_inclusion,
)

LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
)]
ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")
HASHES = [leaf_hash(x) for x in LEAVES]


def _h(*items: str) -> list[bytes]:
    return [bytes.fromhex(x) for x in items]


# (leaf index 0-based, tree size, proof)
INCLUSION = [
    (0, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (5, 8, _h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 3, _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (1, 5, _h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (0, 1, []),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, _h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
              "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")),
    (6, 8, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
    (2, 5, _h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
              "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")),
    (6, 7, _h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
              "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
              "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")),
]


def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_of([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_of_the_reference_leaves(size: int) -> None:
    assert root_of(HASHES[:size]) == ROOTS[size - 1]


def test_compact_range_matches_every_prefix_root() -> None:
    compact = CompactRange()
    for size, item in enumerate(HASHES, start=1):
        compact.append(item)
        assert compact.size == size
        assert compact.root() == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_vectors_are_generated_and_verified(
    index: int, size: int, proof: list[bytes]
) -> None:
    assert inclusion_proof(index, HASHES[:size]) == proof
    verify_inclusion(index, size, HASHES[index], proof, ROOTS[size - 1])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_vectors_are_generated_and_verified(
    old: int, new: int, proof: list[bytes]
) -> None:
    assert consistency_proof(old, HASHES[:new]) == proof
    verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


def _flip(proof: list[bytes], i: int, mask: int) -> list[bytes]:
    out = list(proof)
    out[i] = bytes([out[i][0] ^ mask]) + out[i][1:]
    return out


def _inclusion_probes(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[str, int, int, bytes, list[bytes], bytes]]:
    probes = [
        ("index - 1", index - 1, size, leaf, proof, root),
        ("index + 1", index + 1, size, leaf, proof, root),
        ("index ^ 2", index ^ 2, size, leaf, proof, root),
        ("size * 2", index, size * 2, leaf, proof, root),
        ("size / 2", index, size // 2, leaf, proof, root),
        ("wrong leaf", index, size, b"WrongLeaf", proof, root),
        ("empty root", index, size, leaf, proof, EMPTY_ROOT),
        ("random root", index, size, leaf, proof, SOME_HASH),
        ("trailing garbage", index, size, leaf, [*proof, b""], root),
        ("trailing root", index, size, leaf, [*proof, root], root),
        ("preceding garbage", index, size, leaf, [b"", *proof], root),
        ("preceding root", index, size, leaf, [root, *proof], root),
    ]
    probes += [(f"flipped bit in proof[{i}]", index, size, leaf, _flip(proof, i, 8), root)
               for i in range(len(proof))]
    if proof:
        probes.append(("truncated proof", index, size, leaf, proof[:-1], root))
    if len(proof) > 1:
        probes.append(("inserted component", index, size, leaf,
                       [proof[0], SOME_HASH, *proof[1:]], root))
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), [v for v in INCLUSION if v[1] > 1])
def test_corrupted_inclusion_proofs_are_rejected(
    index: int, size: int, proof: list[bytes]
) -> None:
    root, leaf = ROOTS[size - 1], HASHES[index]
    accepted = []
    for desc, i, n, lf, pr, rt in _inclusion_probes(index, size, proof, root, leaf):
        try:
            verify_inclusion(i, n, lf, pr, rt)
        except ProofError:
            continue
        accepted.append(desc)
    assert accepted == []


def _consistency_probes(
    old: int, new: int, r1: bytes, r2: bytes, proof: list[bytes]
) -> list[tuple[str, int, int, bytes, bytes, list[bytes]]]:
    wrong = hashlib.sha256(b"WrongRoot").digest()
    probes = [
        ("size1 - 1", old - 1, new, r1, r2, proof),
        ("size1 + 1", old + 1, new, r1, r2, proof),
        ("size1 ^ 2", old ^ 2, new, r1, r2, proof),
        ("size2 * 2", old, new * 2, r1, r2, proof),
        ("size2 / 2", old, new // 2, r1, r2, proof),
        ("wrong root1", old, new, wrong, r2, proof),
        ("wrong root2", old, new, r1, wrong, proof),
        ("swapped roots", old, new, r2, r1, proof),
        ("empty proof", old, new, r1, r2, []),
        ("trailing garbage", old, new, r1, r2, [*proof, b""]),
        ("trailing root1", old, new, r1, r2, [*proof, r1]),
        ("trailing root2", old, new, r1, r2, [*proof, r2]),
        ("preceding garbage", old, new, r1, r2, [b"", *proof]),
        ("preceding root1", old, new, r1, r2, [r1, *proof]),
        ("preceding root2", old, new, r1, r2, [r2, *proof]),
        ("preceding proof[0]", old, new, r1, r2, [proof[0], *proof]),
        ("truncated proof", old, new, r1, r2, proof[:-1]),
    ]
    probes += [(f"flipped bit in proof[{i}]", old, new, r1, r2, _flip(proof, i, 16))
               for i in range(len(proof))]
    return probes


@pytest.mark.parametrize(("old", "new", "proof"), [v for v in CONSISTENCY if v[2]])
def test_corrupted_consistency_proofs_are_rejected(
    old: int, new: int, proof: list[bytes]
) -> None:
    accepted = []
    for desc, m, n, r1, r2, pr in _consistency_probes(
            old, new, ROOTS[old - 1], ROOTS[new - 1], proof):
        try:
            verify_consistency(m, n, r1, r2, pr)
        except ProofError:
            continue
        accepted.append(desc)
    assert accepted == []


def test_single_entry_tree_and_bad_hash_sizes() -> None:
    leaf = leaf_hash(b"data")
    verify_inclusion(0, 1, leaf, [], leaf)
    for lf, rt in ((leaf, b""), (b"", leaf), (b"", b"")):
        with pytest.raises(ProofError):
            verify_inclusion(0, 1, lf, [], rt)
    for index, size in ((0, 0), (1, 0), (2, 1)):
        with pytest.raises(ProofError):
            root_from_inclusion(index, size, SOME_HASH, [])


def test_trivial_consistency_cases() -> None:
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, ROOTS[4], [])
    verify_consistency(3, 3, ROOTS[2], ROOTS[2], [])
    for args in ((3, 3, ROOTS[2], ROOTS[3], []), (2, 1, ROOTS[1], ROOTS[0], []),
                 (1, 1, ROOTS[0], ROOTS[0], [EMPTY_ROOT]), (1, 2, ROOTS[0], ROOTS[1], [])):
        with pytest.raises(ProofError):
            verify_consistency(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 9, 31, 64, 100])
def test_generated_proofs_verify_for_every_leaf_and_prefix(size: int) -> None:
    hashes = [leaf_hash(i.to_bytes(4, "big")) for i in range(size)]
    root = root_of(hashes)
    for index in range(size):
        verify_inclusion(index, size, hashes[index], inclusion_proof(index, hashes), root)
    for old in range(1, size + 1):
        verify_consistency(old, size, root_of(hashes[:old]), root,
                           consistency_proof(old, hashes))
