"""What a federated site does for one federation (site.py runs the loop): on the first task it
reads a fixed snapshot of its own `events.governed` (snapshot.py), plans DP-SGD for every round
the coordinator announced and has its own governance charge the whole federation to every
contributing subject before any update leaves; then each `fit` round trains the global model
locally (DP-SGD with plain SGD steps, FedAvg's local solver) and returns the update clipped to
the coordinator's norm, and each `evaluate` round
returns histograms of its held-out logits per label and sensitive group.

Privacy at a site: each round's local training is DP-SGD (Opacus, Poisson sampling, dp.py)
with one noise multiplier calibrated so that all rounds together (`rounds` × steps per round of
the subsampled Gaussian, composed with RDP) cost each subject at most the smaller of the
coordinator's ε and the site spec's `epsilon_per_release`. That composed curve is the release
charge (release id from the federation id and the site), so a site that dies and comes back
is not charged again and trains only the subjects already charged; a site charged for rounds it
then missed is over-counted, never under-counted. The coordinator, which sees the updates, is
not trusted with the data: the per-subject guarantee holds against it too.

Forgotten subjects: their events governed before the forget are still on `events.governed`, so
the snapshot leaves out the training rows of every subject in the forgotten set (they are not
charged either). One forgotten during the federation is left out of the later rounds, and the
site's privacy facts count it (`forgotten_during`): the earlier rounds trained on it, so the
coordinator refuses and marks the release. The evaluate round checks once more (a forget after
the last fit round), and leaves forgotten subjects' held-out rows out. While Redis has lost the
forgotten set (no policy-ready marker) the site declines.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import orjson
import torch

from services.trainer.config import TrainerSettings
from services.trainer.dp import Plan, calibrate, fit_private
from services.trainer.snapshot import ForgottenUnknown, Snapshot, read_snapshot
from shared.datasets.spec import DatasetSpec
from shared.decisions import publish_decision
from shared.events import Decision
from shared.federation import Arrays, RoundTask, SiteUpdate, histograms
from shared.models.features import FeatureTransform
from shared.models.nets import build_model
from shared.principals import Principal
from shared.releases import (
    RELEASE_CHARGE,
    SITE_ACTOR,
    SUBJECTS_TTL_S,
    load_subjects,
    read_verdict,
    release_id,
    store_subjects,
    subjects_digest,
    wait_verdict,
)
from shared.state import make_redis, rkey

log = logging.getLogger(__name__)


@dataclass
class Federation:
    """A site's state for one federation."""

    snapshot: Snapshot
    round_plan: Plan | None = None
    privacy: dict[str, Any] = field(default_factory=dict)
    declined: str = ""
    rounds: list[int] = field(default_factory=list)


def tensors_to_state(tensors: Arrays, prefix: str = "") -> dict[str, torch.Tensor]:
    """A torch state dict from message tensors (those under `prefix`, prefix removed)."""
    return {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in tensors.items()
            if k.startswith(prefix)}


class SiteRounds:
    """Prepare, fit and evaluate for the federations this site takes part in."""

    def __init__(self, settings: TrainerSettings, spec: DatasetSpec, signer: Principal,
                 producer: Any, stop: threading.Event) -> None:
        self.settings, self.spec, self.signer = settings, spec, signer
        self.producer, self.stop = producer, stop
        self.site = str(settings.trainer_federation_site)
        self.redis = make_redis(settings)
        self.group = f"lepton-trainer-site-{self.site}"

    # -- first task of a federation: snapshot, plan, charge --------------------------------

    def prepare(self, task: RoundTask) -> Federation:
        """Read the snapshot, plan every round and have governance charge them (once)."""
        rid = release_id(task.model, "federation", task.federation, self.site)
        dataset = self.spec.name
        earlier = read_verdict(self.redis, self.settings, dataset, rid)
        charged = load_subjects(self.redis, self.settings, dataset, rid) \
            if earlier is not None and earlier.get("status") == "charged" else None
        try:
            snapshot = read_snapshot(self.settings, self.spec, self.group,
                                     self.settings.trainer_val_percent, stop=self.stop,
                                     subjects=set(charged) if charged is not None else None)
        except ForgottenUnknown as error:
            return Federation(Snapshot(), declined=str(error))
        state = Federation(snapshot)
        if earlier is not None and earlier.get("status") != "charged":
            state.declined = f"privacy_charge_refused: {earlier.get('reason')}"
            return state
        if not snapshot.train:
            state.declined = "no training rows"
            return state
        if earlier is not None:  # charged before (a restart): the same plan, the same subjects
            stored = self.redis.get(self._plan_key(rid))
            if stored is None:
                state.declined = "the plan of this site's earlier charge is lost"
                return state
            whole = replace(Plan(**orjson.loads(stored)), rows=len(snapshot.train))
            per_round = whole.steps // task.rounds
        else:
            whole, per_round = self._plan(task, len(snapshot.train))
        state.round_plan = replace(whole, steps=per_round)
        verdict = earlier or self._charge(rid, task, whole, snapshot.subjects)
        state.privacy = {**whole.describe(), "steps_per_round": per_round,
                         "rounds_planned": task.rounds, "release_id": rid, "ledger": verdict,
                         "subjects": len(snapshot.subjects)}
        if charged is not None and snapshot.forgotten_subjects:  # a restart: charged, so
            state.privacy["forgotten_during"] = snapshot.forgotten_subjects  # trained on before
        if verdict is None or verdict.get("status") != "charged":
            reason = "no verdict from governance" if verdict is None else verdict.get("reason")
            state.declined = f"privacy_charge_refused: {reason}"
        return state

    def _plan(self, task: RoundTask, rows: int) -> tuple[Plan, int]:
        """DP-SGD for every round: Poisson rate minibatch/rows, `local_epochs` per round, one σ
        for all rounds together; (the whole federation's plan, steps per round)."""
        privacy = self.spec.privacy
        epsilon = min(task.epsilon, privacy.epsilon_per_release)
        rate = min(1.0, task.minibatch / rows)
        per_round = max(1, round(task.local_epochs / rate))
        sigma = calibrate(epsilon, privacy.delta, rate, per_round * task.rounds,
                          privacy.max_events_per_subject)
        return Plan(rows, rate, per_round * task.rounds, sigma,
                    self.settings.trainer_dp_max_grad_norm, privacy.delta,
                    privacy.max_events_per_subject, epsilon), per_round

    def _plan_key(self, rid: str) -> str:
        return rkey(self.settings, "trainer", "federation", self.spec.name, rid, "plan")

    def _charge(self, rid: str, task: RoundTask, plan: Plan, subjects: list[str]
                ) -> dict[str, Any] | None:
        """The release charge of the whole federation at this site; governance's verdict."""
        described = plan.describe()
        detail = {"release_id": rid, "model": task.model, "epsilon": plan.epsilon(),
                  "delta": plan.delta, "accountant": described["accountant"],
                  "orders": described["orders"],
                  "rdp": [v if math.isfinite(v) else None for v in plan.curve()],
                  "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                  "steps": plan.steps, "max_events_per_subject": plan.events_per_subject,
                  "group_privacy": described["group_privacy"],
                  "subjects_count": len(set(subjects)),
                  "subjects_sha256": subjects_digest(subjects)}
        store_subjects(self.redis, self.settings, self.spec.name, rid, subjects)
        self.redis.set(self._plan_key(rid), orjson.dumps(asdict(plan)), ex=SUBJECTS_TTL_S)
        publish_decision(self.producer, self.settings, Decision(
            decision_id=rid, kind=RELEASE_CHARGE, actor=f"{SITE_ACTOR}{self.site}",
            dataset=self.spec.name, detail=detail), signer=self.signer)
        verdict = wait_verdict(self.redis, self.settings, self.spec.name, rid,
                               self.settings.trainer_charge_timeout_s, self.stop)
        log.info("site %s: federation %s charged to %d subjects: %s", self.site,
                 task.federation, len(set(subjects)), orjson.dumps(verdict).decode())
        return verdict

    # -- rounds ----------------------------------------------------------------------------

    def fit(self, task: RoundTask, state: Federation, tensors: Arrays
            ) -> tuple[SiteUpdate, Arrays]:
        """Train the global model on this site's rows; the clipped update."""
        if state.declined or state.round_plan is None:
            return self.declined(task, state.declined or "not prepared"), {}
        unknown = self._leave_out_forgotten(task, state)
        if unknown is not None:
            return unknown, {}
        transform = FeatureTransform.from_dict(task.feature_transform)
        x = torch.from_numpy(transform.transform(state.snapshot.train))
        y = torch.from_numpy(transform.labels(state.snapshot.train))
        start = tensors_to_state(tensors)
        net = build_model(task.architecture)
        net.load_state_dict(start, strict=True)
        optimizer = torch.optim.SGD(net.parameters(), lr=task.learning_rate)
        fit_private(net, optimizer, x, y, state.round_plan, world=1)
        delta = {k: (v.detach() - start[k]).numpy() for k, v in net.state_dict().items()}
        norm = float(math.sqrt(sum(float(np.sum(np.square(d))) for d in delta.values())))
        scale = min(1.0, task.clip_norm / norm) if norm > 0 else 1.0
        state.rounds.append(task.round)
        return SiteUpdate(
            federation=task.federation, round=task.round, site=self.site, kind="fit",
            num_examples=len(x), update_norm=norm, privacy=state.privacy,
        ), {k: (d * scale).astype(np.float32) for k, d in delta.items()}

    def evaluate(self, task: RoundTask, state: Federation, tensors: Arrays) -> SiteUpdate:
        """Histograms of the candidate's (and live model's) held-out logits."""
        unknown = self._leave_out_forgotten(task, state)
        if unknown is not None:
            return unknown
        window = state.snapshot.validation[-self.settings.trainer_val_window:]
        transform = FeatureTransform.from_dict(task.feature_transform)
        x = torch.from_numpy(transform.transform(window))
        labels = transform.labels(window).astype(np.float64)
        groups = np.array(["" if g is None else g for g in transform.groups(window)],
                          dtype=object)
        evaluation: dict[str, Any] = {}
        for name in ("candidate", "live") if task.live else ("candidate",):
            net = build_model(task.architecture)
            net.load_state_dict(tensors_to_state(tensors, f"{name}."), strict=True)
            with torch.inference_mode():
                logits = net.eval()(x).numpy().astype(np.float64)
            evaluation[name] = {**histograms(logits, labels), "groups": {
                str(g): histograms(logits[groups == g], labels[groups == g])
                for g in sorted(set(groups) - {""})}}
        return SiteUpdate(federation=task.federation, round=task.round, site=self.site,
                          kind="evaluate", num_examples=len(window), evaluation=evaluation,
                          privacy=state.privacy)

    def _leave_out_forgotten(self, task: RoundTask, state: Federation) -> SiteUpdate | None:
        """Leave out the rows of subjects forgotten by now, counting in the privacy facts
        those earlier rounds trained on; a declined answer while nobody can tell."""
        try:
            gone = state.snapshot.drop_forgotten(self.redis, self.settings)
        except ForgottenUnknown as error:
            return self.declined(task, str(error))
        if gone:  # earlier rounds may have trained on them: the coordinator refuses
            state.privacy["forgotten_during"] = state.privacy.get("forgotten_during", 0) + gone
        return None

    def declined(self, task: RoundTask, reason: str) -> SiteUpdate:
        """An answer that this site does not take part (and why)."""
        return SiteUpdate(federation=task.federation, round=task.round, site=self.site,
                          kind="declined", num_examples=0, reason=reason[:500])
