"""The federation coordinator: FedAvg rounds over the configured sites, evaluation on their
held-out rows, and a release through the trainer's gate, registry, signing and announcement.

A federation starts from the live federated version (when its spec and architecture still
match) or from seeded weights over the spec's public feature transform. Each round sends a
signed `fit` task (global weights, local-training and clipping parameters, a deadline) to the
sites still in, and goes on with the answers that came in time once every site answered or the
deadline passed, if at least `min_sites` did (a site that is slow or dead is left behind; its
late answer is dropped and recorded, inbox.py). A site that declined (its governance refused
the charge) is left out of later rounds; a round without quorum ends the federation without a
release. Updates are averaged with FedAvg and the server's noise (aggregate.py), or, with
secure aggregation on, summed masked (secure.py: a key exchange first). An `evaluate`
task then carries the candidate (and the live version) to the sites, whose held-out histograms
are pooled (pooled.py) for the gate; release.py saves and announces.

Consumes `federation.updates`; produces `federation.rounds`, then `models.updates` and
`audit.requests`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

import numpy as np
import torch
from opentelemetry import trace

from services.federation.aggregate import fedavg
from services.federation.card import (
    Outcome,
    Progress,
    card_lineage,
    card_privacy,
    card_training,
)
from services.federation.config import FederationSettings
from services.federation.inbox import Answer, Inbox
from services.federation.pooled import pool
from services.federation.release import refuse_forgotten, release
from services.federation.secure import SecureRounds
from shared.allowlist import AllowList
from shared.datasets import load_spec
from shared.federation import UPDATE_KINDS, Arrays, RoundTask, encode
from shared.kafka import deliver, ensure_topics, make_producer
from shared.models.features import FeatureTransform
from shared.models.gate import decide
from shared.models.nets import architecture, build_model
from shared.models.registry import ArtifactError, ModelCard, Registry
from shared.principals import Principal
from shared.readiness import clear_ready, mark_ready
from shared.topics import Topics
from shared.tracing import get_tracer
from shared.version import code_version

log = logging.getLogger(__name__)


class Coordinator:
    """Runs federations (one, or one every `interval_s`)."""

    def __init__(self, settings: FederationSettings, stop: threading.Event,
                 tracer: trace.Tracer | None = None) -> None:
        self.settings = settings
        self.stop = stop
        self.tracer = tracer or get_tracer(__name__)
        self.spec = load_spec(settings.federation_dataset, settings.federation_specs_dir)
        self.model = settings.model_name()
        self.topics = Topics(settings.topic_prefix)
        ensure_topics(settings, [self.topics.federation_rounds, self.topics.federation_updates,
                                 self.topics.models, self.topics.audit_requests], stop=stop)
        self.signer = Principal.load(settings, "federation")
        self.registry = Registry(settings)
        self.producer = make_producer(settings)
        self.allow = AllowList(settings.sites_path(),
                               dict.fromkeys(settings.federation_sites, UPDATE_KINDS))
        self.secure: SecureRounds | None = None

    def run(self) -> int:
        """Federate until stopped; 0 unless a single federation was aborted."""
        federation_id = self.settings.federation_id
        mark_ready(self.settings, "federation")
        try:
            while not self.stop.is_set():
                outcome = self.federate(federation_id or f"fed-{uuid.uuid4().hex[:12]}")
                federation_id = None
                if self.settings.federation_interval_s is None:
                    return 1 if outcome.status == "aborted" and not self.stop.is_set() else 0
                self.stop.wait(self.settings.federation_interval_s)
        finally:
            clear_ready(self.settings, "federation")
            self.producer.flush(10)
        return 0

    def live_start(self) -> tuple[ModelCard, dict[str, torch.Tensor]] | None:
        """The live version a federation starts from (its card and weights); None to start
        from scratch: no live version, one of another spec, or one carrying a forgotten
        subject."""
        version = self.registry.live(self.model)
        if version is None:
            return None
        if self.registry.contains_forgotten(self.model, version):
            log.warning("live %s v%d contains a forgotten subject's data; federating from "
                        "scratch", self.model, version)
            return None
        try:
            card, state = self.registry.load(self.model, version)
        except ArtifactError as error:
            log.error("live %s v%d is not loadable: %s", self.model, version, error)
            return None
        if card.spec_hash != self.spec.spec_hash() or card.architecture.get(
                "kind") != self.spec.model.kind:
            return None
        return card, state

    def _send(self, task: RoundTask, tensors: Arrays) -> int:
        value, headers = encode(task, tensors, self.signer)
        topic = self.topics.federation_rounds
        self.producer.produce(topic, key=task.federation.encode(), value=value, headers=headers)
        deliver(self.producer, f"{task.kind} task of round {task.round} to {topic}")
        return len(value)

    def federate(self, federation: str) -> Outcome:
        """One federation: rounds, evaluation, gate and release."""
        started = time.monotonic()
        inbox = Inbox(self.settings, self.allow, self.stop)
        try:
            with self.tracer.start_as_current_span("federation", attributes={
                    "lepton.federation": federation}):
                return self._federate(federation, inbox, started)
        finally:
            inbox.close()

    def _federate(self, federation: str, inbox: Inbox, started: float) -> Outcome:
        settings, spec = self.settings, self.spec
        live = self.live_start()
        transform = FeatureTransform.from_dict(live[0].feature_transform) if live \
            else FeatureTransform.from_spec(spec)
        arch = live[0].architecture if live else architecture(
            spec.model.kind, transform.dim, spec.model.hidden)
        torch.manual_seed(settings.federation_seed)
        start = live[1] if live else build_model(arch).state_dict()
        weights: Arrays = {k: v.detach().cpu().numpy().astype(np.float32)
                           for k, v in start.items()}
        common: dict[str, Any] = {
            "federation": federation, "model": self.model, "dataset": spec.name,
            "spec_hash": spec.spec_hash(), "rounds": settings.federation_rounds,
            "architecture": arch, "feature_transform": transform.to_dict(),
            "local_epochs": settings.federation_local_epochs,
            "minibatch": settings.federation_minibatch,
            "learning_rate": settings.federation_learning_rate,
            "clip_norm": settings.federation_clip_norm,
            "epsilon": settings.federation_epsilon or spec.privacy.epsilon_per_release}
        progress = Progress({s: {"rounds": [], "samples": 0}
                             for s in settings.federation_sites})
        self.secure = None
        if settings.federation_secure_aggregation:
            self.secure = SecureRounds(self._send, inbox, self.stop,
                                       settings.federation_round_timeout_s)
            progress.declined.update(self.secure.exchange(common, list(settings.federation_sites)))
            progress.key_exchange_bytes = self.secure.key_exchange_bytes
        for number in range(1, settings.federation_rounds + 1):
            active = [s for s in settings.federation_sites if s not in progress.declined]
            reason = self._round(number, active, common, weights, inbox, progress)
            if reason:
                return self._abort(federation, reason, progress, inbox)
        active = [s for s in settings.federation_sites if s not in progress.declined]
        deadline = time.time() + settings.federation_round_timeout_s
        tensors = {f"candidate.{k}": v for k, v in weights.items()}
        if live:
            tensors.update({f"live.{k}": v.detach().cpu().numpy() for k, v in live[1].items()})
        self._send(RoundTask(kind="evaluate", round=settings.federation_rounds + 1,
                             sites=tuple(active), deadline=deadline, live=live is not None,
                             **common), tensors)
        answers = inbox.collect(federation, settings.federation_rounds + 1, set(active),
                                deadline, self.stop)
        evaluations = {s: a for s, a in answers.items() if a.update.kind == "evaluate"}
        if not evaluations:
            return self._abort(federation, "no site evaluated the candidate", progress, inbox)
        return self._release(federation, weights, arch, transform, live, evaluations,
                             progress, inbox, started)

    def _round(self, number: int, active: list[str], common: dict[str, Any], weights: Arrays,
               inbox: Inbox, progress: Progress) -> str:
        """Run one fit round, updating `weights` in place; an abort reason, or ''."""
        settings = self.settings
        if self.stop.is_set():
            return "stopped"
        if len(active) < settings.federation_min_sites:
            return f"only {len(active)} sites left, below the quorum of " \
                   f"{settings.federation_min_sites}"
        began = time.monotonic()
        deadline = time.time() + (settings.federation_first_round_timeout_s or
                                  settings.federation_round_timeout_s if number == 1 else
                                  settings.federation_round_timeout_s)
        with self.tracer.start_as_current_span("federation round", attributes={
                "lepton.federation.round": number}) as span:
            keys = self.secure.task_keys(active) if self.secure else {}
            sent = self._send(RoundTask(kind="fit", round=number, sites=tuple(active),
                                        deadline=deadline, agreement_keys=keys, **common),
                              weights)
            answers = inbox.collect(str(common["federation"]), number, set(active), deadline,
                                    self.stop, frozenset({"fit", "declined"}))
            fits: dict[str, Answer] = {}
            for site, answer in answers.items():
                if answer.update.kind == "declined":
                    progress.declined[site] = answer.update.reason
                elif answer.update.kind == "fit":
                    fits[site] = answer
            span.set_attribute("lepton.federation.updates", len(fits))
            record: dict[str, Any] = {
                "round": number, "sites": sorted(fits),
                "missing": sorted(set(active) - set(answers)),
                "declined": sorted(s for s, a in answers.items() if a.update.kind == "declined"),
                "bytes_out": sent, "bytes_in": sum(a.size for a in answers.values())}
            if len(fits) < settings.federation_min_sites:
                progress.rounds.append(record)
                return f"round {number}: {len(fits)} updates in time, below the quorum of " \
                       f"{settings.federation_min_sites}"
            average, std, extra = self._aggregate(common, number, active, fits, weights)
            record.update(extra)
            if average is None:
                log.warning("federation %s round %d refused: %s", common["federation"],
                            number, extra.get("refused"))
                progress.rounds.append(record)
                return ""
            progress.noise_std = std
            for name, value in average.items():
                weights[name] = weights[name] + value
            for site, answer in fits.items():
                if site not in record["sites"]:  # a malformed masked update (secure.py)
                    continue
                entry = progress.sites[site]
                entry["rounds"].append(number)
                entry["samples"] = answer.update.num_examples
                entry["privacy"] = answer.update.privacy
                if answer.update.update_norm is not None:
                    entry.setdefault("update_norms", []).append(
                        round(answer.update.update_norm, 4))
            progress.rounds.append({**record, "seconds": round(time.monotonic() - began, 3)})
        log.info("federation %s round %d: updates from %s, missing %s", common["federation"],
                 number, record["sites"], record["missing"])
        return ""

    def _aggregate(self, common: dict[str, Any], number: int, active: list[str],
                   fits: dict[str, Answer], weights: Arrays
                   ) -> tuple[Arrays | None, float, dict[str, Any]]:
        """FedAvg of the clipped updates, or the unmasked sum under secure aggregation (None:
        the round is refused); (average, noise std, what to record)."""
        clip, noise = self.settings.federation_clip_norm, self.settings.federation_noise_multiplier
        if self.secure is None:
            average, std = fedavg([(a.tensors, a.update.num_examples) for a in fits.values()],
                                  clip, noise)
            return dict(average), std, {}
        shapes = {k: tuple(int(d) for d in v.shape) for k, v in weights.items()}
        return self.secure.aggregate(common, number, active, fits, shapes, clip, noise)

    def _abort(self, federation: str, reason: str, progress: Progress, inbox: Inbox
               ) -> Outcome:
        log.warning("federation %s ended without a release: %s (dropped answers: %d)",
                    federation, reason, len(inbox.dropped))
        return Outcome(federation, "aborted", len(progress.rounds), reason,
                       bytes_per_round=progress.bytes_per_round())

    def _release(self, federation: str, weights: Arrays, arch: dict[str, Any],
                 transform: FeatureTransform,
                 live: tuple[ModelCard, dict[str, torch.Tensor]] | None,
                 evaluations: dict[str, Answer], progress: Progress, inbox: Inbox,
                 started: float) -> Outcome:
        settings, spec = self.settings, self.spec
        sensitive = spec.sensitive.name if spec.sensitive else None
        candidate = {s: a.update.evaluation.get("candidate", {}) for s, a in evaluations.items()}
        metrics, fairness, per_site = pool(
            candidate, spec.model.decision_threshold, sensitive,
            min_rows=settings.federation_fairness_min_rows,
            min_positives=settings.federation_fairness_min_positives)
        live_metrics = pool({s: a.update.evaluation.get("live", {}) for s, a in
                             evaluations.items()}, spec.model.decision_threshold,
                            sensitive)[0] if live else None
        verdict = decide(metrics, fairness, live_metrics, live[0].version if live else None,
                         metrics=settings.federation_gate_metrics,
                         tolerance=settings.federation_gate_tolerance,
                         max_dp_diff=settings.federation_max_dp_diff,
                         max_eo_diff=settings.federation_max_eo_diff,
                         min_auc=spec.model.min_auc)
        for site, entry in progress.sites.items():
            entry.update(per_site.get(site, {}))
            if site in evaluations:  # its latest facts: a forget after its last fit round
                entry["privacy"] = evaluations[site].update.privacy or entry.get("privacy")
        privacy = card_privacy(settings, spec, progress)
        verdict = refuse_forgotten(verdict, privacy["sites"])
        rounds_run = len(progress.rounds)
        gate = {**verdict.to_dict(settings.federation_gate_tolerance),
                "live_metrics": live_metrics,
                "evaluated_by": sorted(evaluations), "metrics_from": "pooled held-out "
                "histograms of the sites (0.1-logit bins)"}
        card = ModelCard(
            model=self.model, dataset=spec.name, spec_hash=spec.spec_hash(), architecture=arch,
            feature_transform=transform.to_dict(), metrics=metrics, fairness=fairness,
            epsilon=privacy["epsilon"], delta=privacy["delta"],
            lineage=card_lineage(federation, self.topics.federation_updates, progress,
                                 inbox.dropped),
            code_version=code_version(), device="cpu",
            wall_time_s=round(time.monotonic() - started, 3), energy_method="not measured: "
            "the coordinator only aggregates (the sites train)",
            training=card_training(settings, progress, live[0].version if live else None),
            gate=gate, privacy=privacy, parent_version=live[0].version if live else None,
            status="promoted" if verdict.promoted else "refused")
        state = {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
        saved = release(settings, spec, self.registry, self.producer, self.signer, self.tracer,
                        card, state, verdict)
        return Outcome(federation, saved.status, rounds_run, "; ".join(verdict.reasons), saved,
                       progress.bytes_per_round())
