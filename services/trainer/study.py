"""The private hyper-parameter search's study (`lepton tune`): one Optuna TPE study per model
and study id, kept in Redis or a journal file (Optuna's JournalStorage), so a restart or another
process continues it instead of starting over.

Every trial that touches data is one DP-SGD run (dp.py) with the trial's learning rate, hidden
sizes (mlp), epochs, clip norm and noise multiplier. Its per-subject RDP curve is written to the
trial (user attribute `rdp`) before it reads a row, so a trial that fails half-way still counts.
The study's privacy cost is the RDP composition (order-wise sum, shared/accounting.py) of every
such curve: per-trial composition, not a private-selection theorem (Papernot & Steinke 2022
would allow a random number of trials; here the count is fixed and every trial is paid for). A
trial whose curve would take the composition over the spec's `tuning.epsilon` is pruned before
it touches data. Each trial's noise multiplier is the one that spends an equal share of the
budget on every planned trial (N identical runs compose like one run of N× the steps), times a
searched scale ≥ 1. The spec's defaults are the first trial, so the best is never worse than
them on the study's held-out rows.

Consumes a snapshot's featurised rows; produces trials (value = held-out F1 or ROC-AUC, weights
as safetensors under `<data dir>/tuning/`) and the study's composed curve.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import optuna
import torch
from safetensors.torch import load_file, save_file

from services.trainer.config import TrainerSettings
from services.trainer.dp import Plan, calibrate, fit_private
from services.trainer.evaluate import quality, tune_threshold
from shared.accounting import compose, epsilon_from_rdp
from shared.datasets.spec import DatasetSpec
from shared.models.nets import architecture, build_model, predict_proba

log = logging.getLogger(__name__)
Rows = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]
PRUNED_OVER_BUDGET = "over_budget"


@dataclass(frozen=True)
class StudyPlan(Plan):
    """The winner's DP-SGD plan, charged as the whole study: its curve is the composition of
    every trial that touched data (the release charge and the card read it from here)."""

    trial_curves: tuple[tuple[float, ...], ...] = ()
    study: str = ""

    def curve(self) -> list[float]:
        """The study's per-subject RDP curve (every trial's curve, summed order by order)."""
        return compose(*self.trial_curves)

    def describe(self) -> dict[str, Any]:
        """The card's privacy facts: the winner's DP-SGD run, charged as the study's total."""
        return {**super().describe(), "study": self.study, "trials_charged": len(
            self.trial_curves), "composition": "RDP, order-wise sum over every trial that "
            "touched data (per-trial composition; the winner's own run is one of them)"}


def study_name(model: str, study_id: str) -> str:
    """The Optuna study name of `study_id` for `model`."""
    return f"lepton-{model}-{study_id}"


def storage(settings: TrainerSettings) -> optuna.storages.BaseStorage:
    """The shared study storage: Redis (under the key prefix) or a journal file."""
    from optuna.storages.journal import (
        JournalFileBackend,
        JournalRedisBackend,
        JournalStorage,
    )

    with warnings.catch_warnings():  # the Redis journal backend is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if settings.trainer_tune_storage == "redis":
            return JournalStorage(JournalRedisBackend(
                settings.redis_url, prefix=f"{settings.redis_prefix}optuna:"))
        folder = settings.data_dir / "tuning"
        folder.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(folder / "studies.journal")))


def open_study(settings: TrainerSettings, model: str, study_id: str) -> optuna.Study:
    """Create the study, or load it when it exists (a replay or a restart)."""
    seed = int.from_bytes(hashlib.sha256(study_id.encode()).digest()[:4], "big")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=storage(settings), study_name=study_name(model, study_id),
                               direction="maximize", load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=seed,
                                                                  n_startup_trials=5))


def touched(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Every trial that touched data (it has a curve), whatever its state."""
    return [t for t in study.get_trials(deepcopy=False) if "rdp" in t.user_attrs]


def curves(study: optuna.Study) -> list[tuple[float, ...]]:
    """The RDP curves of every trial that touched data."""
    return [tuple(math.inf if v is None else float(v) for v in t.user_attrs["rdp"])
            for t in touched(study)]


def weights_path(settings: TrainerSettings, model: str, study_id: str, number: int) -> Path:
    """Where a trial's weights are kept (safetensors)."""
    return settings.data_dir / "tuning" / model / study_id / f"trial-{number}.safetensors"


def defaults(settings: TrainerSettings, spec: DatasetSpec) -> dict[str, Any]:
    """The trainer's own settings for this dataset, as the study's first trial."""
    params: dict[str, Any] = {
        "learning_rate": settings.trainer_learning_rate or spec.model.dp_learning_rate
        or spec.model.learning_rate,
        "epochs": settings.trainer_epochs or spec.model.dp_epochs or spec.model.epochs_per_batch,
        "max_grad_norm": spec.model.dp_max_grad_norm or settings.trainer_dp_max_grad_norm,
        "noise_scale": 1.0}
    if spec.model.kind == "mlp":
        params["hidden"] = ",".join(str(h) for h in spec.model.hidden)
    return params


def trial_plan(settings: TrainerSettings, spec: DatasetSpec, rows: int, params: dict[str, Any],
               planned: int) -> Plan:
    """A trial's DP-SGD plan: Poisson rate minibatch/rows, `epochs` passes, σ = the
    equal-share σ times the trial's noise scale."""
    privacy = spec.privacy
    rate = min(1.0, (spec.model.dp_minibatch or settings.trainer_minibatch) / rows)
    steps = max(1, round(int(params["epochs"]) / rate))
    share = calibrate(spec.tuning.epsilon, privacy.delta, rate, steps * planned,
                      privacy.max_events_per_subject)
    return Plan(rows, rate, steps, share * float(params["noise_scale"]),
                float(params["max_grad_norm"]), privacy.delta, privacy.max_events_per_subject,
                spec.tuning.epsilon)


class Objective:
    """One trial: check the budget, record the curve, train with DP-SGD, score held-out rows."""

    def __init__(self, settings: TrainerSettings, spec: DatasetSpec, study_id: str,
                 train: Rows, held: Rows, planned: int) -> None:
        self.settings, self.spec, self.study_id = settings, spec, study_id
        self.train, self.held, self.planned = train, held, planned
        self.model = settings.model_name()

    def _suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        tuning = self.spec.tuning
        params: dict[str, Any] = {
            "learning_rate": trial.suggest_float("learning_rate", *tuning.learning_rate,
                                                 log=True),
            "epochs": trial.suggest_int("epochs", *tuning.epochs),
            "max_grad_norm": trial.suggest_float("max_grad_norm", *tuning.max_grad_norm,
                                                 log=True),
            "noise_scale": trial.suggest_float("noise_scale", *tuning.noise_scale)}
        if self.spec.model.kind == "mlp":
            params["hidden"] = trial.suggest_categorical(
                "hidden", [",".join(str(h) for h in sizes) for sizes in tuning.hidden])
        return params

    def __call__(self, trial: optuna.Trial) -> float:
        """Run one trial (pruned, without touching data, when it would overspend)."""
        params = self._suggest(trial)
        plan = trial_plan(self.settings, self.spec, len(self.train[0]), params, self.planned)
        spent = curves(trial.study)
        total = epsilon_from_rdp(compose(*spent, plan.curve()), plan.delta)
        if total > self.spec.tuning.epsilon:
            trial.set_user_attr("pruned", PRUNED_OVER_BUDGET)
            raise optuna.TrialPruned(f"would spend ε {total:.3f} of {self.spec.tuning.epsilon}")
        trial.set_user_attr("rdp", [v if math.isfinite(v) else None for v in plan.curve()])
        trial.set_user_attr("epsilon", plan.epsilon())
        for key in ("noise_multiplier", "sample_rate", "steps"):
            trial.set_user_attr(key, getattr(plan, key))
        hidden = tuple(int(h) for h in str(params.get("hidden", "")).split(",") if h)
        arch = architecture(self.spec.model.kind, self.train[0].shape[1], hidden)
        trial.set_user_attr("architecture", arch)
        torch.manual_seed(trial.number)
        net = build_model(arch)
        optimizer = torch.optim.Adam(net.parameters(), lr=float(params["learning_rate"]))
        fit_private(net, optimizer, torch.from_numpy(self.train[0]),
                    torch.from_numpy(self.train[1]), plan, world=1)
        x, labels = self.held
        probs = predict_proba(net.eval(), torch.from_numpy(x)).numpy().astype(np.float64)
        chosen = self.spec.model.decision_threshold
        threshold = tune_threshold(probs, labels.astype(np.float64)) if chosen == "tune" \
            else float(chosen)
        metrics = quality(probs, labels.astype(np.float64), threshold)
        trial.set_user_attr("metrics", {k: v for k, v in metrics.items() if math.isfinite(v)})
        path = weights_path(self.settings, self.model, self.study_id, trial.number)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(path))
        return float(metrics.get(self.spec.tuning.metric, 0.0))


def winner(settings: TrainerSettings, study: optuna.Study, study_id: str
           ) -> tuple[optuna.trial.FrozenTrial, dict[str, torch.Tensor]]:
    """The best completed trial and its weights."""
    best = study.best_trial
    path = weights_path(settings, settings.model_name(), study_id, best.number)
    return best, load_file(str(path))


def study_epsilon(study: optuna.Study, delta: float) -> float:
    """The study's per-subject ε at δ so far."""
    spent = curves(study)
    return epsilon_from_rdp(compose(*spent), delta) if spent else 0.0
