"""A training cycle: the state every rank keeps between the cycle's first round and its
release, and the candidate rank 0 builds from it for the gate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from opentelemetry.trace import SpanContext

from services.trainer import dp as dp_mod
from services.trainer.config import TrainerSettings
from services.trainer.devices import describe_device
from services.trainer.lineage import CycleLineage, merge
from services.trainer.release import Candidate, LiveModel
from services.trainer.train import Engine
from shared.features import FeatureTransform
from shared.nets import build_model


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


def dp_info(engine: Engine, delta: float) -> dict[str, Any] | None:
    """The DP-SGD settings recorded in the card (None without DP)."""
    if engine.dp is None:
        return None
    return {"library": "opacus", "noise_multiplier": engine.dp.noise_multiplier,
            "max_grad_norm": engine.dp.max_grad_norm, "delta": delta, "accountant": "rdp",
            "secure_rng": dp_mod.secure_rng_available(),
            "noise": "opacus secure_mode sampling (floating-point attack hardened)"}


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
                  "rows": engine.rows, "steps": engine.steps, "rounds": cycle.rounds,
                  "active_s": round(cycle.active_s, 3), "workers": world,
                  "backend": "single" if world == 1 else (
                      "nccl" if device.type == "cuda" else "gloo"),
                  "warm_start_version": cycle.parent.card.version if cycle.parent else None,
                  "dp": dp_info(engine, settings.trainer_dp_delta)},
        dp_history=engine.dp.history if engine.dp is not None else None,
        wall_time_s=time.monotonic() - cycle.started,
        energy_j=sum(float(part["energy"]) for part in parts),
        energy_method=energy_method, device=describe_device(device), parent=cycle.parent)
