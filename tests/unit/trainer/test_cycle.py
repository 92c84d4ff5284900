"""A private cycle's buffer: rows kept within the contribution bound, and the rows of
subjects forgotten before the release left out of the features, the reference and the
subjects charged; a round's batch leaving out forgotten subjects' rows."""

from __future__ import annotations

import time

import numpy as np

from services.trainer.cycle import Cycle
from services.trainer.decode import SUBJECT_KEY, Batch
from shared.models.features import FeatureTransform
from shared.models.reference import Bins, ReferenceCounter


def _cycle() -> Cycle:
    bins = [Bins("size", "numeric", edges=(1.0, 2.0)), Bins("colour", "category",
                                                             categories=("red", "blue"))]
    return Cycle(started=time.monotonic(), parent=None, transform=None,
                 reference=ReferenceCounter(bins))


def _rows(subjects: list[str], start: int) -> tuple[list[dict[str, object]], np.ndarray,
                                                    np.ndarray]:
    rows: list[dict[str, object]] = [
        {SUBJECT_KEY: s, "size": float(start + i), "colour": "red" if i % 2 else None}
        for i, s in enumerate(subjects)]
    x = np.arange(start, start + len(rows), dtype=np.float32).reshape(-1, 1)
    return rows, x, (x[:, 0] % 2).astype(np.float32)


def test_forgotten_subjects_rows_are_left_out_of_features_reference_and_subjects() -> None:
    cycle = _cycle()
    # b's second row is over the bound, and so is its row in the second batch
    batches = [_rows(["a", "b", "c", "b"], 0), _rows(["d", "b", "e"], 10), _rows(["f"], 20)]
    for rows, features, labels in batches:
        cycle.keep_private(rows, features, labels, limit=1)
    assert cycle.over_bound == 2

    assert cycle.drop_forgotten({"b", "e", "nobody"}) == 2
    x, y = cycle.private_rows(1)

    assert x[:, 0].tolist() == [0.0, 2.0, 10.0, 20.0]
    assert y.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert dict(cycle.subjects) == {"a": 1, "c": 1, "d": 1, "f": 1}
    assert cycle.forgotten_rows == 2
    assert cycle.reference is not None
    expected = ReferenceCounter(cycle.reference.bins)
    expected.add_rows(row for rows, _, _ in batches for row in rows
                      if row["size"] in (0.0, 2.0, 10.0, 20.0))  # the rows kept
    assert cycle.reference.to_json() == expected.to_json()


def test_binned_rows_count_as_add_rows_does_with_missing_values_left_out() -> None:
    rows = [{"size": 0.5, "colour": "red"}, {"size": None, "colour": "green"},
            {"size": "x", "colour": None}, {"size": 5.0}]
    counter = _cycle().reference
    assert counter is not None
    found = counter.bin_rows(rows)
    assert found.tolist() == [[0, 0], [-1, 2], [-1, -1], [2, -1]]
    counter.add_bins(found)
    assert counter.to_json() == {"size": [1, 0, 1], "colour": [1, 0, 1]}


def test_a_batch_leaves_out_forgotten_subjects_rows_and_their_prefetched_features() -> None:
    rows, x, y = _rows(["a", "b", "c"], 0)
    held_out = [{SUBJECT_KEY: "b", "size": 1.0}, {SUBJECT_KEY: "d", "size": 2.0}]
    batch = Batch(train=rows, validation=held_out)
    batch.features = (FeatureTransform("test", "hash"), x, y)
    assert batch.subjects() == ["a", "b", "c", "d"]

    batch.drop_forgotten({"b", "x"})

    assert [row[SUBJECT_KEY] for row in batch.train] == ["a", "c"]
    assert [row[SUBJECT_KEY] for row in batch.validation] == ["d"]
    assert batch.features is not None and batch.features[1][:, 0].tolist() == [0.0, 2.0]
    assert batch.forgotten == 1
