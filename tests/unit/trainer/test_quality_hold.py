"""The quality hold's decision: replicas' windows overlapping a cycle's data are added up by
their counts (the events-weighted mean of their indices), the latest window stands in when none
overlaps yet, no window or no floor means no hold, and the hold's detail is what governance
admits for the trainer (and refuses from anyone else)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from lepton.keyset import make_key_set
from services.governance.admission import (
    ALLOWED,
    KIND_NOT_ALLOWED,
    Admitted,
    HeldDetail,
    Refused,
    admit,
)
from services.trainer.quality_hold import (
    KIND,
    QualityBook,
    combine,
    hold_decision,
    judge,
)
from shared.allowlist import AllowList
from shared.events import encode
from shared.principals import Principal, sign_decision
from shared.quality_windows import QualityWindow, window_of
from shared.signing import key_id, load_or_create_private_key

T0 = 1_790_000_040.0
W = 60.0


def _w(start: float, events: int, errors: int, replica: str = "r0", fields: int = 10,
       dataset: str = "breast_cancer") -> QualityWindow:
    window = window_of(dataset, replica, datetime.fromtimestamp(start, UTC),
                       datetime.fromtimestamp(start + W, UTC), partial=False, events=events,
                       fields=fields, errors=errors, min_index=0.95)
    # a distinct stand-in signature per window (the book keys windows by signature)
    return window.model_copy(update={"signature": f"{replica}-{start}-{events}-{errors}"})


def test_replicas_add_up_events_weighted() -> None:
    a, b = _w(T0, events=900, errors=90), _w(T0, events=100, errors=500, replica="r1")
    both = combine([a, b], "overlap")
    weighted = (900 * a.quality_index + 100 * b.quality_index) / 1000
    assert both.index == pytest.approx(weighted) == pytest.approx(1 - 590 / 10_000)
    assert both.sum_error_rate == pytest.approx(
        (900 * a.sum_error_rate + 100 * b.sum_error_rate) / 1000)
    # not the plain mean of the two indices (0.745): the small replica weighs less
    assert both.index != pytest.approx((a.quality_index + b.quality_index) / 2)
    assert (both.events, both.windows, both.replicas) == (1000, 2, 2)


def test_the_windows_overlapping_the_data_are_used_else_the_latest() -> None:
    book = QualityBook("breast_cancer")
    assert book.index_for(T0, T0 + 10, 5.0) is None
    good, bad, later = _w(T0, 1000, 0), _w(T0 + W, 1000, 2000), _w(T0 + 2 * W, 1000, 100)
    for window in (good, bad, later, _w(T0, 1000, 9000, dataset="transactions")):
        book.add(window)
    assert len(book) == 3 and not book.add(bad)  # another dataset's and replays are not kept
    only_bad = book.index_for(T0 + W + 10, T0 + W + 50, 5.0)
    assert only_bad is not None and only_bad.basis == "overlap"
    assert only_bad.index == pytest.approx(0.8) and only_bad.windows == 1
    # data from 2 s after the bad window began: the slack reaches back into the good one
    spans = book.index_for(T0 + W + 2, T0 + W + 20, 5.0)
    assert spans is not None and spans.windows == 2 and spans.index == pytest.approx(0.9)
    assert spans.start_s == T0 and spans.end_s == T0 + 2 * W
    # data newer than every closed window: the latest closed window stands in
    fresh = book.index_for(T0 + 10 * W, T0 + 10 * W + 5, 5.0)
    assert fresh is not None and fresh.basis == "latest" and fresh.start_s == T0 + 2 * W
    assert fresh.index == pytest.approx(0.99)


def test_the_book_keeps_the_newest_windows() -> None:
    book = QualityBook("breast_cancer", keep=3)
    for n in range(5):
        book.add(_w(T0 + n * W, 100, n))
    assert len(book) == 3
    oldest = book.index_for(T0, T0 + 1, 0.0)
    assert oldest is not None and oldest.basis == "latest"  # the first windows are gone


def test_judge_holds_only_below_a_known_floor() -> None:
    book = QualityBook("breast_cancer")
    book.add(_w(T0, 1000, 600))  # index 0.94
    index = book.index_for(T0, T0 + 1, 0.0)
    assert judge(index, None) is None
    assert judge(None, 0.95) is None  # no window seen yet: train
    assert judge(index, 0.94) is None  # at the floor is not below it
    hold = judge(index, 0.95)
    assert hold is not None and hold.min_index == 0.95
    detail = hold.detail("breast_cancer", rows=1234)
    assert detail == {"reason": "quality_below_min_index", "model": "breast_cancer",
                      "index": pytest.approx(0.94), "sum_error_rate": pytest.approx(0.6),
                      "min_index": 0.95, "events": 1000,
                      "window_start": "2026-09-21T14:14:00Z",
                      "window_end": "2026-09-21T14:15:00Z", "windows": 1, "replicas": 1,
                      "basis": "overlap", "rows": 1234}


def test_governance_admits_a_trainer_signed_hold_only(tmp_path: Path) -> None:
    make_key_set(tmp_path)
    book = QualityBook("breast_cancer")
    book.add(_w(T0, 1000, 900))
    hold = judge(book.index_for(T0, T0 + 1, 0.0), 0.95)
    assert hold is not None
    decision = hold_decision(hold, actor="trainer", dataset="breast_cancer",
                             model="breast_cancer", rows=10)
    allow = AllowList(tmp_path / "public", ALLOWED)

    def signed_by(name: str) -> Admitted | Refused:
        key = load_or_create_private_key(tmp_path / f"{name}.key")
        value = encode(sign_decision(Principal(name, key, key_id(key.public_key())), decision))
        return admit(value, lambda d: d == "breast_cancer", 10.0, allow)

    admitted = signed_by("trainer")
    assert isinstance(admitted, Admitted) and admitted.decision.kind == KIND
    assert isinstance(admitted.detail, HeldDetail) and admitted.detail.index == pytest.approx(0.91)
    for other in ("ingest", "serving", "monitor"):
        refused = signed_by(other)
        assert isinstance(refused, Refused) and refused.code == KIND_NOT_ALLOWED, other
