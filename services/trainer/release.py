"""Rank 0's side of a cycle: load the live model to warm-start from, evaluate the candidate
beside it on the held-out window, apply the gate, have governance charge a DP-SGD release to
every contributing subject (charge.py; a refused or unanswered charge means no announcement),
record global feature importance (mean |attribution| per raw field,
shared.models.attribution) and the reference histograms the monitor checks drift against
(shared/models/reference.py; DP-noised in model mode) in the card, write the signed artifact,
then make it live, record the decisions (promoted/refused) and announce it on `models.updates`
with the trace context in the headers.

The steps after the registry write are idempotent (deterministic decision ids) and marked
done in Redis, so a trainer that crashed between them finishes them on restart.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from confluent_kafka import Producer
from opentelemetry import trace
from torch import nn

from services.trainer.charge import charge_release, privacy_summary
from services.trainer.compress import compress_release
from services.trainer.config import TrainerSettings
from services.trainer.dp import Plan
from services.trainer.evaluate import fairness, quality, tune_threshold
from services.trainer.forgotten import forgotten_in_release
from services.trainer.lineage import furthest
from services.trainer.retry import REDIS_OR_BROKER_DOWN, until_redis
from shared.carbon import carbon_intensity
from shared.datasets.spec import DatasetSpec
from shared.decisions import publish_decision
from shared.events import Decision
from shared.models.announce import announce
from shared.models.attribution import global_importance
from shared.models.features import FeatureTransform
from shared.models.gate import GateResult, decide
from shared.models.nets import build_model, predict_proba
from shared.models.reference import ReferenceCounter, spec_bins
from shared.models.registry import ArtifactError, ModelCard, Registry
from shared.principals import Principal
from shared.state import rkey
from shared.topics import Topics
from shared.version import code_version

log = logging.getLogger(__name__)
ACTOR = "trainer"
IMPORTANCE_ROWS = 256


@dataclass
class LiveModel:
    """The live version a cycle warm-starts from and is compared against."""

    card: ModelCard
    state: dict[str, torch.Tensor]
    transform: FeatureTransform
    net: nn.Module


@dataclass
class Candidate:
    """What a cycle trained, ready for the gate."""

    state: dict[str, torch.Tensor]
    net: nn.Module
    transform: FeatureTransform
    architecture: dict[str, Any]
    lineage: dict[str, Any]
    training: dict[str, Any]
    plan: Plan | None
    subjects: list[str]
    wall_time_s: float
    energy_j: float
    energy_method: str
    device: str
    parent: LiveModel | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Releaser:
    """Registry, gate and announcements, used by rank 0 only."""

    def __init__(self, settings: TrainerSettings, spec: DatasetSpec, registry: Registry,
                 producer: Producer, tracer: trace.Tracer) -> None:
        self.settings = settings
        self.spec = spec
        self.registry = registry
        self.producer = producer
        self.tracer = tracer
        self.signer = Principal.load(settings, "trainer")
        self.model = settings.model_name()
        self.topics = Topics(settings.topic_prefix)
        self.code_version = code_version()
        self.carbon = carbon_intensity(settings)
        self.redis = registry.redis
        self._offsets_key = rkey(settings, "trainer", self.model, self.topics.governed, "offsets")
        self._released_key = rkey(settings, "trainer", self.model, "released")

    def resume_offsets(self) -> dict[int, int]:
        """Where to continue: furthest of the newest card on disk and Redis, per partition."""
        stored = {k.decode(): v.decode() for k, v in self.redis.hgetall(self._offsets_key).items()}
        from_card: dict[str, Any] = {}
        for version in reversed(self.registry.versions(self.model)):
            try:
                card = self.registry.card(self.model, version)
            except ArtifactError:
                continue
            if card.lineage.get("topic") == self.topics.governed:
                from_card = card.lineage.get("resume_offsets", {})
                break
        return furthest(stored, from_card)

    def store_offsets(self, offsets: dict[int, int]) -> None:
        """Mirror the resume position to Redis (after the registry write)."""
        if offsets:
            self.redis.hset(self._offsets_key, mapping={str(p): o for p, o in offsets.items()})

    def live(self) -> LiveModel | None:
        """The verified live model, when there is one this spec can continue from."""
        version = self.registry.live(self.model)
        if version is None:
            return None
        if self.registry.contains_forgotten(self.model, version):
            log.warning("live %s v%d contains a forgotten subject's data; training from scratch",
                        self.model, version)
            return None
        try:
            card, state = self.registry.load(self.model, version)
        except ArtifactError as error:
            log.error("live %s v%s is not loadable, training from scratch: %s",
                      self.model, version, error)
            return None
        if card.spec_hash != self.spec.spec_hash() or card.architecture.get(
                "kind") != self.spec.model.kind:
            log.warning("live %s v%d was trained on another spec or architecture; "
                        "training from scratch", self.model, version)
            return None
        net = build_model(card.architecture)
        net.load_state_dict(state, strict=True)
        return LiveModel(card, state, FeatureTransform.from_dict(card.feature_transform), net)

    def _scores(self, net: nn.Module, transform: FeatureTransform,
                window: list[dict[str, Any]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        x = torch.from_numpy(transform.transform(window))
        net_cpu = net.to("cpu").eval()
        return predict_proba(net_cpu, x).numpy().astype(np.float64)

    def _importance(self, candidate: Candidate, window: list[dict[str, Any]]) -> dict[str, Any]:
        """Global feature importance (mean |attribution| per raw field) on the held-out rows;
        like the metrics, it is computed outside DP-SGD and so not covered by the card's ε."""
        rows = window[:IMPORTANCE_ROWS]
        importance = global_importance(candidate.net.to("cpu").eval(), candidate.transform,
                                       candidate.transform.transform(rows))
        return {**importance, "data": "held-out window (not covered by epsilon)"} \
            if importance else {}

    def _reference(self, candidate: Candidate, window: list[dict[str, Any]]) -> dict[str, Any]:
        """The card's reference histograms: in model mode the noised counts of the release's
        training rows (their ε is in the plan, charged with it); without DP, the held-out
        window's exact counts and scores."""
        if self.spec.privacy.mode == "local":
            return {}
        counter = ReferenceCounter(spec_bins(self.spec))
        plan = candidate.plan
        if plan is not None:
            parts = candidate.extra.get("reference_counts")
            if not parts or plan.extra_epsilon <= 0:
                return {}
            counter.merge(parts)
            privacy = counter.noise(plan.extra_epsilon, plan.events_per_subject)
            return counter.reference("training rows of this release", privacy)
        counter.add_rows(window)
        counter.add_scores(self._scores(candidate.net, candidate.transform, window).tolist())
        return counter.reference("held-out window (exact: the model is not private)")

    def _threshold(self, probs: npt.NDArray[np.float64], labels: npt.NDArray[np.float64]
                   ) -> float:
        """The spec's decision threshold, or the F1-maximising one when it says `tune`."""
        chosen = self.spec.model.decision_threshold
        return tune_threshold(probs, labels) if chosen == "tune" else float(chosen)

    def release(self, candidate: Candidate, window: list[dict[str, Any]],
                resume: dict[int, int], stop: threading.Event | None = None) -> ModelCard:
        """Evaluate, gate, save and (when promoted) make live and announce; returns the card."""
        transform = candidate.transform
        with self.tracer.start_as_current_span("trainer evaluate") as span:
            labels = transform.labels(window).astype(np.float64)
            groups = transform.groups(window)
            probs = self._scores(candidate.net, transform, window)
            threshold = self._threshold(probs, labels)
            metrics = quality(probs, labels, threshold)
            fair = fairness(probs, labels, groups, transform.sensitive, threshold,
                            min_rows=self.settings.trainer_fairness_min_rows,
                            min_positives=self.settings.trainer_fairness_min_positives)
            parent = candidate.parent
            live_metrics = None
            if parent is not None:
                live_probs = self._scores(parent.net, parent.transform, window)
                live_metrics = quality(live_probs, labels, self._threshold(live_probs, labels))
            verdict = decide(metrics, fair, live_metrics,
                             parent.card.version if parent else None,
                             metrics=self.settings.trainer_gate_metrics,
                             tolerance=self.settings.trainer_gate_tolerance,
                             max_dp_diff=self.settings.trainer_max_dp_diff,
                             max_eo_diff=self.settings.trainer_max_eo_diff,
                             min_auc=self.spec.model.min_auc)
            span.set_attribute("lepton.validation_rows", len(window))
            span.set_attribute("lepton.gate.promoted", verdict.promoted)
            for name in ("f1", "roc_auc"):
                if name in metrics:
                    span.set_attribute(f"lepton.metric.{name}", metrics[name])
        forgotten = until_redis(lambda: forgotten_in_release(
            self.registry, self.settings, self.model, parent.card.version if parent else None,
            candidate.subjects), "forgotten subjects check", stop)
        if forgotten is not None:
            verdict = GateResult(False, [*verdict.reasons, forgotten.reason],
                                 verdict.compared_to)
        lineage = {**candidate.lineage, "topic": self.topics.governed,
                   "group": self.settings.group_id(),
                   "resume_offsets": {str(p): o for p, o in sorted(resume.items())}}
        privacy = privacy_summary(self.spec, candidate.plan, parent.card if parent else None)
        if verdict.promoted and candidate.plan is not None:
            verdict = charge_release(self, candidate, lineage, privacy, verdict, stop)
        reference = self._reference(candidate, window)
        gate = verdict.to_dict(self.settings.trainer_gate_tolerance)
        gate["live_metrics"] = live_metrics
        variants, compressed = compress_release(
            self.spec.compression, candidate.architecture, candidate.state, candidate.net,
            transform.transform(window), labels, threshold, metrics)
        eps = privacy.get("epsilon") if candidate.plan is not None else None
        delta = privacy.get("delta") if candidate.plan is not None else None
        card = ModelCard(
            model=self.model, dataset=self.spec.name, spec_hash=self.spec.spec_hash(),
            architecture=candidate.architecture, feature_transform=transform.to_dict(),
            metrics=metrics, fairness=fair, epsilon=eps, delta=delta, lineage=lineage,
            code_version=self.code_version, device=candidate.device,
            wall_time_s=round(candidate.wall_time_s, 3), energy_j=round(candidate.energy_j, 3),
            energy_method=candidate.energy_method,
            co2e_g=round(self.carbon.grams(candidate.energy_j), 6), carbon=self.carbon.to_dict(),
            joules_per_sample=round(candidate.energy_j / max(1, int(
                candidate.training.get("rows") or 0)), 6), reference=reference,
            training={**candidate.training,
                      "feature_importance": self._importance(candidate, window)},
            gate=gate, privacy=privacy,
            parent_version=parent.card.version if parent else None,
            status="promoted" if verdict.promoted else "refused", variants=variants,
        )
        with self.tracer.start_as_current_span("trainer release") as span:
            # a save that fails before its rename leaves nothing behind, so it may be retried
            saved = until_redis(lambda: self.registry.save(card, candidate.state, compressed),
                                "save", stop)
            if forgotten is not None and forgotten.carries:
                self.registry.mark(saved.model, saved.version, contains_forgotten=True)
            span.set_attribute("lepton.model.version", saved.version)

            def after_save() -> None:
                self.store_offsets(resume)
                self.finish(saved)
            until_redis(after_save, "post-save steps", stop, errors=REDIS_OR_BROKER_DOWN)
        log.info("%s v%d %s (f1 %.4f%s)", self.model, saved.version, saved.status,
                 metrics.get("f1", float("nan")),
                 "" if verdict.promoted else f"; {'; '.join(verdict.reasons)}")
        return saved

    def finish(self, card: ModelCard) -> None:
        """Post-save steps (idempotent): live pointer, decisions, announcement, done marker."""
        if self.redis.sismember(self._released_key, str(card.version)):
            return
        ident = f"{card.model}-v{card.version}-{card.sha256[:16]}"
        detail = {"version": card.version, "metrics": card.metrics, "fairness": {
            k: v for k, v in card.fairness.items() if k != "groups"},
            "reasons": card.gate.get("reasons", []), "compared_to": card.gate.get("compared_to"),
            "sha256": card.sha256}
        detail["privacy"] = {k: card.privacy.get(k) for k in (
            "mode", "epsilon", "delta", "release_id", "max_subject_epsilon", "non_private")
            if k in card.privacy}
        if card.status == "promoted":
            self.registry.set_live(card.model, card.version)
            publish_decision(self.producer, self.settings, Decision(
                decision_id=f"{ident}-promoted", kind="model_promoted", actor=ACTOR,
                dataset=card.dataset, detail=detail), signer=self.signer)
            self.announce(card, "promote")
        else:
            publish_decision(self.producer, self.settings, Decision(
                decision_id=f"{ident}-refused", kind="model_refused", actor=ACTOR,
                dataset=card.dataset, detail=detail), signer=self.signer)
        self.redis.sadd(self._released_key, str(card.version))

    def announce(self, card: ModelCard, action: str, share: float | None = None) -> None:
        """Publish the announcement on `models.updates` (key = model), trace context included."""
        announce(self.producer, self.settings, self.registry, card, action, share, self.tracer,
                 signer=self.signer)

    def reconcile(self) -> None:
        """Finish the post-save steps of saved versions a crash interrupted."""
        for version in self.registry.versions(self.model):
            if self.redis.sismember(self._released_key, str(version)):
                continue
            try:
                card, _ = self.registry.load(self.model, version)
            except ArtifactError as error:
                log.error("cannot reconcile %s v%d: %s", self.model, version, error)
                continue
            if card.lineage.get("topic") == self.topics.governed:
                log.info("finishing the release of %s v%d after a restart", self.model, version)
                self.finish(card)
