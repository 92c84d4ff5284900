"""`lepton tune`: a private hyper-parameter search over a dataset's governed events, whose
winner is released like any trained model.

Reads a snapshot of `events.governed` (snapshot.py; its end offsets are pinned in the study, so
a restart or a replay of the study id trains and evaluates on the same records, less the rows
of subjects forgotten since: a forgotten subject's earlier events are left out), runs the
study's remaining trials (study.py), then hands the best trial's model to the trainer's
Releaser: the same gate, the same release charge, registry, signing and announcement as a
trained cycle. The charge is the whole study's composed curve (every trial that touched data)
under a release id fixed by the winner's weights and the snapshot's lineage, so governance
charges it once before anything is announced, and a replayed study id runs no trial again and
is not charged again. The card's `training.tuning` holds the study id, the best trial's
parameters and value, the default trial's value, every charged trial's ε and the total.

Consumes `events.governed`; produces a model version (`models.updates`, `audit.requests`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import torch

from services.trainer.config import TrainerSettings
from services.trainer.release import Candidate, Releaser
from services.trainer.snapshot import Snapshot, read_snapshot
from services.trainer.study import (
    PRUNED_OVER_BUDGET,
    Objective,
    StudyPlan,
    curves,
    defaults,
    open_study,
    study_epsilon,
    touched,
    trial_plan,
    winner,
)
from shared.datasets import load_spec
from shared.energy import EnergyMeter
from shared.kafka import make_producer
from shared.models.features import FeatureTransform
from shared.models.nets import build_model
from shared.models.registry import Registry
from shared.tracing import get_tracer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneResult:
    """What `lepton tune` did."""

    study: str
    trials: int
    pruned: int
    best_params: dict[str, Any]
    best_value: float
    default_value: float | None
    epsilon: float
    version: int
    status: str
    replayed: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the command prints it)."""
        return dict(self.__dict__)


def _finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
              optuna.trial.TrialState.FAIL)
    return sum(t.state in states for t in study.get_trials(deepcopy=False))


def _summary(study: optuna.Study, best: optuna.trial.FrozenTrial, delta: float,
             metric: str) -> dict[str, Any]:
    first = min(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return {"study": study.user_attrs["study_id"], "storage": study.user_attrs["storage"],
            "metric": metric, "best_trial": best.number, "best_params": best.params,
            "best_value": best.value, "default_trial": first.number,
            "default_value": first.value, "planned_trials": study.user_attrs["planned"],
            "trials": [{"number": t.number, "state": t.state.name, "value": t.value,
                        "epsilon": t.user_attrs.get("epsilon"), "params": t.params}
                       for t in study.get_trials(deepcopy=False)],
            "epsilon": study_epsilon(study, delta),
            "accountant": "rdp: per-trial composition (order-wise sum of every trial's "
                          "Opacus compute_rdp curve; Balle et al. 2020 conversion)"}


def run_tune(settings: TrainerSettings, trials: int, study_id: str | None = None, *,
             progress: bool = False, stop: threading.Event | None = None) -> TuneResult:
    """Run (or continue) the study and release its winner; returns what happened."""
    stop = stop or threading.Event()
    spec = load_spec(settings.trainer_dataset, settings.trainer_specs_dir)
    if spec.privacy.mode != "model" or not settings.trainer_dp_enabled:
        raise ValueError("tune searches DP-SGD trials: it needs a `model`-mode dataset and "
                         "LEPTON_TRAINER_DP_ENABLED=true")
    model = settings.model_name()
    study_id = study_id or uuid.uuid4().hex[:12]
    study = open_study(settings, model, study_id)
    pinned = study.user_attrs.get("snapshot")
    replayed = pinned is not None
    if replayed and study.user_attrs.get("spec_hash") != spec.spec_hash():
        raise ValueError(f"study {study_id} was run on another version of the "
                         f"{spec.name} spec")
    started = time.monotonic()
    snapshot = read_snapshot(settings, spec, f"lepton-tune-{model}",
                             settings.trainer_val_percent, ends=pinned, stop=stop)
    if not snapshot.train or not snapshot.validation:
        raise ValueError(f"no training or held-out rows of {spec.name} on events.governed")
    if not replayed:
        for key, value in (("study_id", study_id), ("spec_hash", spec.spec_hash()),
                           ("storage", settings.trainer_tune_storage), ("planned", trials),
                           ("snapshot", {str(p): o for p, o in snapshot.ends.items()})):
            study.set_user_attr(key, value)
        study.enqueue_trial(defaults(settings, spec))
    transform = FeatureTransform.from_spec(spec)
    window = snapshot.validation[-settings.trainer_val_window:]
    objective = Objective(settings, spec, study_id, (transform.transform(snapshot.train),
                          transform.labels(snapshot.train)),
                          (transform.transform(window), transform.labels(window)),
                          int(study.user_attrs["planned"]))
    meter = EnergyMeter(torch.device("cpu"), settings.energy_watts_per_core)
    meter.start()
    remaining = max(0, trials - _finished(study))
    if remaining and study.user_attrs.get("released") is not None:
        raise ValueError(f"study {study_id} already released its winner; more trials would "
                         "spend budget no release charges: start a new study")
    if remaining:
        with warnings.catch_warnings():  # Optuna marks its progress bar experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=remaining, show_progress_bar=progress,
                           callbacks=[lambda s, t: s.stop() if stop.is_set() else None])
    best, state = winner(settings, study, study_id)
    released = study.user_attrs.get("released")
    if released is None:
        released = _release(settings, study, best, state, snapshot, transform, window,
                            meter, started, stop)
        study.set_user_attr("released", released)
    pruned = sum(t.user_attrs.get("pruned") == PRUNED_OVER_BUDGET
                 for t in study.get_trials(deepcopy=False))
    first = min(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return TuneResult(study_id, len(touched(study)), pruned, best.params, float(best.value or 0),
                      first.value, study_epsilon(study, spec.privacy.delta),
                      int(released["version"]), str(released["status"]), replayed)


def _release(settings: TrainerSettings, study: optuna.Study, best: optuna.trial.FrozenTrial,
             state: dict[str, torch.Tensor], snapshot: Snapshot, transform: FeatureTransform,
             window: list[dict[str, Any]], meter: EnergyMeter, started: float,
             stop: threading.Event) -> dict[str, Any]:
    """The winner through the trainer's Releaser (gate, charge of the study, registry,
    announcement)."""
    spec = load_spec(settings.trainer_dataset, settings.trainer_specs_dir)
    arch = best.user_attrs["architecture"]
    net = build_model(arch)
    net.load_state_dict(state, strict=True)
    trained = trial_plan(settings, spec, len(snapshot.train), best.params,
                         int(study.user_attrs["planned"]))
    plan = StudyPlan(**asdict(trained), trial_curves=tuple(curves(study)),
                     study=str(study.user_attrs["study_id"]))
    registry = Registry(settings)
    producer = make_producer(settings)
    tracer = get_tracer(__name__)
    releaser = Releaser(settings, spec, registry, producer, tracer)
    candidate = Candidate(
        state=state, net=net, transform=transform, architecture=arch,
        lineage=snapshot.lineage,
        training={"optimizer": "adam", "learning_rate": best.params["learning_rate"],
                  "epochs_per_batch": best.params["epochs"],
                  "minibatch": spec.model.dp_minibatch or settings.trainer_minibatch,
                  "rows": len(snapshot.train),
                  "steps": plan.steps, "rounds": 1, "workers": 1, "backend": "single",
                  "rows_over_contribution_bound": snapshot.over_bound,
                  "rows_forgotten": snapshot.forgotten,
                  "tuning": _summary(study, best, spec.privacy.delta, spec.tuning.metric)},
        plan=plan, subjects=snapshot.subjects, wall_time_s=time.monotonic() - started,
        energy_j=meter.read(), energy_method=meter.describe(), device="cpu",
        parent=releaser.live())
    try:
        card = releaser.release(candidate, window, {}, stop)
    finally:
        producer.flush(15)
    return {"version": card.version, "status": card.status,
            "release_id": card.privacy.get("release_id")}
