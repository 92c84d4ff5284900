"""The audit store: idempotent appends, crash repair, checkpoints, proofs and tamper detection
over 10k entries."""

from __future__ import annotations

import random
import shutil
import tracemalloc
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.governance.merkle import ProofError
from services.governance.segments import SegmentLog
from services.governance.store import SEGMENTS, AuditStore, StoreError, partition_dir
from services.governance.verify import (
    build_consistency,
    build_inclusion,
    check_consistency,
    check_inclusion,
    find_event,
    verify_partition,
    verify_store,
)
from shared.signing import load_or_create_private_key

LOG = "test.audit.log"


def _fields(i: int) -> dict[str, object]:
    return {"identity": f"event:e{i}", "kind": "event_released", "actor": "governance",
            "event_id": f"e{i}", "subject_id": f"s{i % 7}", "dataset": "transactions",
            "epsilon": 1.0, "mechanism": "laplace", "source": f"t/0/{i}"}


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return load_or_create_private_key(tmp_path / "keys" / "audit-signing.key")


def _build(root: Path, key: Ed25519PrivateKey, count: int, every: int) -> AuditStore:
    store = AuditStore(root, LOG, fsync=False)
    store.open(1)
    for i in range(count):
        store.append(0, _fields(i))
        if (i + 1) % every == 0:
            store.checkpoint(0, key)
    if store.unsigned(0):
        store.checkpoint(0, key)
    store.close()
    return store


def test_append_is_idempotent_per_identity_and_survives_reopen(tmp_path: Path,
                                                               key: Ed25519PrivateKey) -> None:
    store = AuditStore(tmp_path / "audit", LOG, fsync=False)
    store.open(2)
    first, line, new = store.append(1, _fields(1))
    again, line2, new2 = store.append(1, {**_fields(1), "kind": "event_withheld"})
    assert (new, new2) == (True, False)
    assert again == first and line2 == line
    store.append(1, _fields(2))
    root = store.parts[1].compact.root()
    store.close()

    reopened = AuditStore(tmp_path / "audit", LOG, fsync=False)
    reopened.open(2)
    assert reopened.lookup("event:e1") == first
    assert reopened.parts[1].size == 2
    assert reopened.parts[1].compact.root() == root
    assert reopened.append(1, _fields(2))[2] is False


def test_the_store_keeps_no_leaf_in_memory(tmp_path: Path) -> None:
    """Per leaf the store holds its identity and position, never the leaf's bytes (nor, as
    before, orjson's 8 KiB buffer behind each one); a replay reads the leaf back from disk."""
    store = AuditStore(tmp_path / "audit", LOG, fsync=False)
    store.open(1)
    count = 2000
    decisions = [(0, {**_fields(i), "detail": {"note": "x" * 2000}}) for i in range(count)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        sealed = store.append_many(decisions)
        lines = sum(len(line) for _, line, _ in sealed)
        del sealed
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert lines > count * 2000
    # the identity index, line offsets and Merkle state: a few hundred bytes a leaf
    assert held < count * 400, (held, lines)
    again = store.append_many(decisions[::-1])
    assert [new for _, _, new in again] == [False] * count
    assert [s.leaf_index for s, _, _ in again] == list(range(count))[::-1]
    assert all(b'"x' in line for _, line, _ in again)
    store.close()


def test_segment_lines_read_back_across_rolls_reopens_and_unflushed_writes(
        tmp_path: Path) -> None:
    lines = [f"line {i} ".encode() + b"y" * random.Random(i).randrange(300) for i in range(400)]
    seg = SegmentLog(tmp_path / "s", segment_bytes=2048, fsync=False)
    seg.open_for_append()
    seg.append_many(lines[:150])
    for i in range(150, 400):
        seg.append(lines[i])
        assert seg.read(i) == lines[i]  # still in the writer's buffer
    assert [seg.read(i) for i in range(400)] == lines
    seg.close()
    assert len(list((tmp_path / "s").glob("*.seg"))) > 10
    with sorted((tmp_path / "s").glob("*.seg"))[-1].open("ab") as handle:
        handle.write(b"torn")
    reader = SegmentLog(tmp_path / "s")
    with pytest.raises(IndexError):
        reader.read(0)  # not scanned yet
    assert list(reader.scan()) == lines
    order = random.Random(7).sample(range(400), 400)
    assert [reader.read(i) for i in order] == [lines[i] for i in order]
    with pytest.raises(IndexError):
        reader.read(400)


def test_torn_final_line_is_cut_on_reopen(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    _build(tmp_path / "audit", key, 5, 100)
    seg = next((partition_dir(tmp_path / "audit", 0) / SEGMENTS).glob("*.seg"))
    with seg.open("ab") as handle:
        handle.write(b'{"half a rec')
    report = verify_partition(tmp_path / "audit", 0, key.public_key(), LOG)
    assert report.ok and report.torn_bytes > 0
    store = AuditStore(tmp_path / "audit", LOG, fsync=False)
    store.open(1)
    sealed, _, new = store.append(0, _fields(5))
    assert new and sealed.leaf_index == 5
    store.close()
    assert verify_partition(tmp_path / "audit", 0, key.public_key(), LOG).torn_bytes == 0


def test_segments_roll_and_stay_contiguous(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    store = AuditStore(tmp_path / "audit", LOG, fsync=False, segment_bytes=4096)
    store.open(1)
    for i in range(200):
        store.append(0, _fields(i))
    store.checkpoint(0, key)
    store.close()
    segs = sorted((partition_dir(tmp_path / "audit", 0) / SEGMENTS).glob("*.seg"))
    assert len(segs) > 3
    assert verify_partition(tmp_path / "audit", 0, key.public_key(), LOG).ok
    segs[1].unlink()
    report = verify_partition(tmp_path / "audit", 0, key.public_key(), LOG)
    assert not report.ok and "missing" in report.problems[0]


def test_reopening_a_truncated_store_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    _build(tmp_path / "audit", key, 20, 10)
    seg = next((partition_dir(tmp_path / "audit", 0) / SEGMENTS).glob("*.seg"))
    lines = seg.read_bytes().split(b"\n")
    seg.write_bytes(b"\n".join(lines[:15]) + b"\n")
    with pytest.raises(StoreError, match="truncated"):
        AuditStore(tmp_path / "audit", LOG, fsync=False).open(1)


def test_inclusion_and_consistency_proofs_check_with_the_public_key_alone(
        tmp_path: Path, key: Ed25519PrivateKey) -> None:
    root = tmp_path / "audit"
    _build(root, key, 37, 10)
    [(partition, index, _line)] = find_event(root, "e23")
    proof = build_inclusion(root, partition, index)
    assert proof["tree_size"] == 37
    assert "e23" in check_inclusion(proof, key.public_key())
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(ProofError, match="signature"):
        check_inclusion(proof, other)
    forged = {**proof, "record": proof["record"].replace("event_released", "event_withheld")}
    with pytest.raises(ProofError):
        check_inclusion(forged, key.public_key())
    moved = {**proof, "leaf_index": 22}
    with pytest.raises(ProofError):
        check_inclusion(moved, key.public_key())

    consistency = build_consistency(root, 0)
    assert (consistency["old"]["tree_size"], consistency["new"]["tree_size"]) == (10, 37)
    assert "prefix" in check_consistency(consistency, key.public_key())
    swapped = {**consistency, "old": consistency["new"], "new": consistency["old"]}
    with pytest.raises(ProofError):
        check_consistency(swapped, key.public_key())


def test_proof_of_an_unsigned_leaf_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    store = AuditStore(tmp_path / "audit", LOG, fsync=False)
    store.open(1)
    store.append(0, _fields(0))
    store.close()
    with pytest.raises(ProofError, match="not yet covered"):
        build_inclusion(tmp_path / "audit", 0, 0)


N = 10_000


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ed25519PrivateKey]:
    base = tmp_path_factory.mktemp("big")
    key = load_or_create_private_key(base / "audit-signing.key")
    _build(base / "audit", key, N, 1000)
    return base / "audit", key


def _tampered(src: Path, dst: Path, change: object) -> Path:
    shutil.copytree(src, dst)
    seg = next((partition_dir(dst, 0) / SEGMENTS).glob("*.seg"))
    lines = seg.read_bytes().split(b"\n")[:-1]
    lines = change(lines)  # type: ignore[operator]
    seg.write_bytes(b"".join(line + b"\n" for line in lines))
    return dst


def _edit(i: int):  # type: ignore[no-untyped-def]
    def change(lines: list[bytes]) -> list[bytes]:
        lines[i] = lines[i].replace(b"event_released", b"event_withheld")
        return lines
    return change


def _flip(i: int, j: int):  # type: ignore[no-untyped-def]
    def change(lines: list[bytes]) -> list[bytes]:
        line = bytearray(lines[i])
        line[j % len(line)] ^= 1
        lines[i] = bytes(line)
        return lines
    return change


def _drop(i: int):  # type: ignore[no-untyped-def]
    def change(lines: list[bytes]) -> list[bytes]:
        del lines[i]
        return lines
    return change


def _swap(i: int, j: int):  # type: ignore[no-untyped-def]
    def change(lines: list[bytes]) -> list[bytes]:
        lines[i], lines[j] = lines[j], lines[i]
        return lines
    return change


def _truncate(k: int):  # type: ignore[no-untyped-def]
    def change(lines: list[bytes]) -> list[bytes]:
        return lines[:-k]
    return change


def _cases() -> list[tuple[str, object]]:
    rng = random.Random(6962)
    cases: list[tuple[str, object]] = [("edit first", _edit(0)), ("edit last", _edit(N - 1)),
                                       ("drop first", _drop(0)), ("drop last", _drop(N - 1)),
                                       ("swap last two", _swap(N - 2, N - 1)),
                                       ("truncate 1", _truncate(1))]
    for n in range(4):
        i = rng.randrange(N)
        j = rng.randrange(N - 1)
        j += j >= i
        cases += [(f"edit {i}", _edit(i)), (f"flip bit in {i}", _flip(i, rng.randrange(400))),
                  (f"drop {i}", _drop(i)), (f"swap {i},{j}", _swap(i, j)),
                  (f"truncate {n}", _truncate(rng.randrange(1, N)))]
    return cases


def test_every_tampering_of_one_entry_in_10k_is_detected(
        big_store: tuple[Path, Ed25519PrivateKey], tmp_path: Path) -> None:
    root, key = big_store
    assert [r.ok for r in verify_store(root, key.public_key(), LOG)] == [True]
    undetected = []
    for n, (desc, change) in enumerate(_cases()):
        copy = _tampered(root, tmp_path / f"case{n}", change)
        report = verify_partition(copy, 0, key.public_key(), LOG)
        if report.ok:
            undetected.append(desc)
    assert undetected == []


def test_a_forged_checkpoint_is_detected(big_store: tuple[Path, Ed25519PrivateKey],
                                         tmp_path: Path) -> None:
    root, key = big_store
    copy = tmp_path / "forged"
    shutil.copytree(root, copy)
    path = partition_dir(copy, 0) / "checkpoints.jsonl"
    path.write_bytes(path.read_bytes().replace(b'"tree_size":5000', b'"tree_size":4999'))
    report = verify_partition(copy, 0, key.public_key(), LOG)
    assert any("signature" in p for p in report.problems)


def test_segment_log_rejects_newlines(tmp_path: Path) -> None:
    seg = SegmentLog(tmp_path / "s", fsync=False)
    seg.open_for_append()
    with pytest.raises(ValueError):
        seg.append(b"a\nb")
