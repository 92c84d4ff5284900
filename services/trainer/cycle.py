"""A training cycle: the state every rank keeps between the cycle's first round and its
release, and the candidate rank 0 builds from it for the gate."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from opentelemetry.trace import SpanContext

from services.trainer.config import TrainerSettings
from services.trainer.decode import SUBJECT_KEY
from services.trainer.devices import describe_device
from services.trainer.dp import Plan
from services.trainer.lineage import CycleLineage, merge
from services.trainer.quality_hold import Hold
from services.trainer.release import Candidate, LiveModel
from services.trainer.train import Engine
from shared.models.features import FeatureTransform
from shared.models.nets import build_model
from shared.models.reference import ReferenceCounter


@dataclass
class Cycle:
    """State of the cycle in progress (identical on every rank except the local parts)."""

    started: float
    parent: LiveModel | None
    transform: FeatureTransform | None
    engine: Engine | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    lineage: CycleLineage = field(default_factory=CycleLineage)
    validation: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    rounds: int = 0
    active_s: float = 0.0
    batch_spans: list[SpanContext] = field(default_factory=list)
    private_x: list[npt.NDArray[np.float32]] = field(default_factory=list)
    private_y: list[npt.NDArray[np.float32]] = field(default_factory=list)
    private_subjects: list[list[str]] = field(default_factory=list)
    private_bins: list[npt.NDArray[np.int16]] = field(default_factory=list)
    subjects: Counter[str] = field(default_factory=Counter)
    over_bound: int = 0
    forgotten_rows: int = 0  # buffered rows left out: their subject was forgotten meanwhile
    plan: Plan | None = None
    reference: ReferenceCounter | None = None
    times: tuple[float, float] | None = None  # this rank's data window (Kafka timestamps, s)
    held: bool = False  # skipped for data quality (every rank agrees)
    hold: Hold | None = None  # why (rank 0)

    def saw(self, times: tuple[float, float] | None) -> None:
        """Widen this rank's data window by a round's."""
        if times is not None:
            low, high = self.times or times
            self.times = (min(low, times[0]), max(high, times[1]))

    def keep_private(self, rows: list[dict[str, Any]], x: npt.NDArray[np.float32],
                     y: npt.NDArray[np.float32], limit: int) -> None:
        """Buffer rows for the cycle's DP-SGD release, at most `limit` per subject (rows over
        the bound are counted in the card, not trained on), each with its subject and its
        reference bins (counted at the release, once forgotten subjects are left out)."""
        keep = []
        for index, row in enumerate(rows):
            subject = str(row.get(SUBJECT_KEY))
            if self.subjects[subject] < limit:
                self.subjects[subject] += 1
                keep.append(index)
            else:
                self.over_bound += 1
        if keep:
            if self.reference is not None:
                self.private_bins.append(self.reference.bin_rows(rows[i] for i in keep))
            self.private_x.append(x[keep])
            self.private_y.append(y[keep])
            self.private_subjects.append([str(rows[i].get(SUBJECT_KEY)) for i in keep])

    def drop_forgotten(self, gone: set[str]) -> int:
        """Leave out the buffered rows of `gone` subjects (neither trained on, counted in the
        reference, nor charged); returns how many."""
        dropped = 0
        for index, subjects in enumerate(self.private_subjects):
            keep = [i for i, subject in enumerate(subjects) if subject not in gone]
            if len(keep) == len(subjects):
                continue
            dropped += len(subjects) - len(keep)
            self.private_x[index] = self.private_x[index][keep]
            self.private_y[index] = self.private_y[index][keep]
            self.private_subjects[index] = [subjects[i] for i in keep]
            if self.private_bins:
                self.private_bins[index] = self.private_bins[index][keep]
        for subject in gone:
            self.subjects.pop(subject, None)
        self.forgotten_rows += dropped
        return dropped

    def private_rows(self, dim: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """This rank's buffered (features, labels); counts them into the reference."""
        if self.reference is not None:
            for found in self.private_bins:
                self.reference.add_bins(found)
            self.private_bins = []
        if not self.private_x:
            return np.zeros((0, dim), dtype=np.float32), np.zeros(0, dtype=np.float32)
        return np.concatenate(self.private_x), np.concatenate(self.private_y)


def build_candidate(cycle: Cycle, state: dict[str, torch.Tensor], parts: list[dict[str, Any]],
                    settings: TrainerSettings, *, world: int, device: torch.device,
                    energy_method: str, learning_rate: float, epochs: int) -> Candidate:
    """The cycle's trained model with its lineage, training facts and energy, for the gate."""
    engine = cycle.engine
    assert engine is not None
    assert cycle.transform is not None
    net = build_model(cycle.architecture)
    net.load_state_dict(state, strict=True)
    return Candidate(
        state=state, net=net, transform=cycle.transform, architecture=cycle.architecture,
        lineage=merge(part["lineage"] for part in parts),
        training={"optimizer": "adam", "learning_rate": learning_rate,
                  "epochs_per_batch": epochs, "minibatch": engine.minibatch,
                  "average_decay": engine.average_decay,
                  "rows": engine.rows, "steps": engine.steps, "rounds": cycle.rounds,
                  "active_s": round(cycle.active_s, 3), "workers": world,
                  "backend": "single" if world == 1 else (
                      "nccl" if device.type == "cuda" else "gloo"),
                  "warm_start_version": cycle.parent.card.version if cycle.parent else None,
                  "rows_over_contribution_bound": sum(int(p.get("over_bound", 0))
                                                      for p in parts),
                  "rows_forgotten": sum(int(p.get("forgotten", 0)) for p in parts)},
        plan=cycle.plan,
        subjects=sorted({s for part in parts for s in part.get("subjects", ())}),
        wall_time_s=time.monotonic() - cycle.started,
        energy_j=sum(float(part["energy"]) for part in parts),
        energy_method=energy_method, device=describe_device(device), parent=cycle.parent)
