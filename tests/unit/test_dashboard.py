"""`lepton up`'s one-line summary (non-terminal output) carries the dashboard's figures."""

from __future__ import annotations

from lepton.dashboard import STAGES, Snapshot, plain_line


def test_the_plain_line_names_every_stage_model_and_privacy_budget() -> None:
    snap = Snapshot(0.0, {label: i for i, label in enumerate(STAGES)}, {},
                    budgets={"transactions": 1.4473, "breast_cancer": 1.0},
                    models=[("transactions", 3, {"f1": 0.85})], last_trace="ab" * 16)
    line = plain_line(snap)
    assert line == ("lepton up: produced=0 ingested=1 rejected=2 governed=3 withheld=4 "
                    "trained=5 predictions=6 model_updates=7 models=transactions:v3 "
                    "max_subject_epsilon=breast_cancer:1,transactions:1.45 "
                    f"last_trace={'ab' * 16}")


def test_the_plain_line_before_anything_happened() -> None:
    line = plain_line(Snapshot(0.0, {}, {}))
    assert line.endswith("model_updates=0 models=- max_subject_epsilon=- last_trace=-")
