"""A cycle's training, on every rank: warm-start from the live model (rank 0 loads and verifies
it, then broadcasts), train each round's rows (or, in model privacy mode, buffer them for one
DP-SGD release at the cycle's end), with a span per round linked to the events it consumed.

Consumes the rounds' decoded batches; produces the cycle's engine (weights), its held-out rows,
lineage and DP plan, from which rank 0 builds the candidate (cycle.py).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import torch
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from services.trainer.comm import Comm
from services.trainer.config import TrainerSettings
from services.trainer.cycle import Cycle
from services.trainer.decode import Batch, row_subjects
from services.trainer.dp import Plan
from services.trainer.forgotten import forgotten_among
from services.trainer.prefetch import Prefetcher
from services.trainer.release import Releaser
from services.trainer.retry import until_redis
from services.trainer.telemetry import TrainerMetrics
from services.trainer.train import Engine
from shared.datasets.spec import DatasetSpec
from shared.energy import EnergyMeter
from shared.models.features import FeatureTransform
from shared.models.nets import architecture, build_model, predict_proba
from shared.models.reference import ReferenceCounter, reference_curve, spec_bins
from shared.service_record import count_work
from shared.tracing import links_from_headers, messaging_attributes, span_name

log = logging.getLogger(__name__)


def is_private(settings: TrainerSettings, spec: DatasetSpec) -> bool:
    """Whether the cycles train with DP-SGD; raises when the spec forbids training without."""
    privacy = spec.privacy
    private = privacy.mode == "model" and settings.trainer_dp_enabled
    if privacy.mode == "model" and not private and not privacy.allow_non_private:
        raise ValueError(f"dataset {spec.name} is in privacy mode `model` without "
                         "`allow_non_private: true`: the trainer must use DP-SGD")
    return private


class CycleTrainer:
    """The training half of a rank: the spec's training settings and the cycle's engine."""

    def __init__(self, settings: TrainerSettings, spec: DatasetSpec, comm: Comm,
                 releaser: Releaser, meter: EnergyMeter, metrics: TrainerMetrics,
                 tracer: trace.Tracer, stop: threading.Event, topic: str) -> None:
        self.settings = settings
        self.spec = spec
        self.comm = comm
        self.device = comm.device
        self.releaser = releaser
        self.meter = meter
        self.metrics = metrics
        self.tracer = tracer
        self.stop = stop
        self.topic = topic
        self.prefetch: Prefetcher | None = None
        self.releases = 0  # versions released so far (each cycle's seed differs by it)
        privacy = spec.privacy
        self.private = is_private(settings, spec)
        self.seed = settings.trainer_seed
        model = spec.model
        self.epochs = settings.trainer_epochs or (
            model.dp_epochs if self.private else None) or model.epochs_per_batch
        # the reference histograms for drift monitoring (not in local mode: its rows are
        # noised per event, so they would not compare with live traffic)
        self.bins = spec_bins(spec) if privacy.mode != "local" else []
        self.learning_rate = settings.trainer_learning_rate or (
            model.dp_learning_rate if self.private else None) or model.learning_rate

    def start(self) -> Cycle:
        """Warm-start from the live model (rank 0 loads and verifies it, then broadcasts)."""
        parent = until_redis(self.releaser.live, "live model", self.stop) \
            if self.comm.leader else None
        info = self.comm.broadcast_json(
            {"version": parent.card.version, "transform": parent.card.feature_transform,
             "architecture": parent.card.architecture} if parent else None)
        cycle = Cycle(started=time.monotonic(), parent=parent, transform=None,
                      reference=ReferenceCounter(self.bins) if self.private and self.bins
                      else None)
        self.meter.start()
        if info is not None:
            cycle.transform = FeatureTransform.from_dict(info["transform"])
            self._publish_transform(cycle.transform)
            self._build_engine(cycle, info["architecture"],
                               parent.state if parent is not None else None)
            log.info("cycle warm-starts from live v%d", info["version"])
        return cycle

    def _build_engine(self, cycle: Cycle, arch: dict[str, Any],
                      state: dict[str, torch.Tensor] | None) -> None:
        torch.manual_seed(self.seed)
        cycle.architecture = arch
        net = build_model(arch)
        if state is not None:
            net.load_state_dict(state, strict=True)
        net.to(self.device)
        self.comm.broadcast_([p.data for p in net.parameters()])
        cycle.engine = Engine(net, self.comm, learning_rate=self.learning_rate,
                              minibatch=self.settings.trainer_minibatch, epochs=self.epochs,
                              seed=self.seed + self.releases,
                              average_decay=0.0 if self.private else self.spec.model.average_decay)

    def _fit_transform(self, cycle: Cycle) -> None:
        """No live model: the transform comes from the spec's public bounds (no data)."""
        cycle.transform = FeatureTransform.from_spec(self.spec)
        self._publish_transform(cycle.transform)
        arch = architecture(self.spec.model.kind, cycle.transform.dim, self.spec.model.hidden)
        self._build_engine(cycle, arch, None)

    def _publish_transform(self, transform: FeatureTransform) -> None:
        if self.prefetch is not None:
            self.prefetch.transform = transform

    def train(self, cycle: Cycle, batch: Batch, global_train: int) -> None:
        """Fold a round's batch into the cycle and train on it (buffer it, when private)."""
        links, count = links_from_headers(batch.headers, self.settings.trainer_link_cap)
        with self.tracer.start_as_current_span(
                span_name("process", self.topic), kind=SpanKind.CONSUMER, links=links,
                attributes={
                    **messaging_attributes(self.topic, "process"),
                    "messaging.batch.message_count": batch.consumed,
                    "lepton.links.total": count, "lepton.links.recorded": len(links),
                    "lepton.rank": self.comm.rank}) as batch_span:
            if len(cycle.batch_spans) < self.settings.trainer_link_cap:
                cycle.batch_spans.append(batch_span.get_span_context())
            cycle.lineage.add(batch)
            cycle.validation.extend(batch.validation)
            count_work(len(batch.train))
            cycle.forgotten_rows += batch.forgotten
            for outcome, count in (("train", len(batch.train)),
                                   ("validation", len(batch.validation)),
                                   ("forgotten", batch.forgotten),
                                   ("skipped", batch.skipped), ("unlabelled", batch.unlabelled),
                                   ("rejected", len(batch.rejected))):
                if count:
                    self.metrics.records.add(count, {"outcome": outcome})
            if global_train == 0:
                return
            if cycle.transform is None:
                self._fit_transform(cycle)
            assert cycle.transform is not None
            assert cycle.engine is not None
            if self.private:
                x, y = batch.featurize(cycle.transform)
                cycle.keep_private(batch.train, x, y,
                                   self.spec.privacy.max_events_per_subject)
                return
            cycle.subjects.update(row_subjects(batch.train))
            with self.tracer.start_as_current_span("trainer train") as span:
                began = time.monotonic()
                x, y = batch.featurize(cycle.transform)
                stats = cycle.engine.train_round(x, y, global_train)
                self.metrics.round_seconds.record(time.monotonic() - began)
                span.set_attribute("lepton.train.rows", stats.rows)
                span.set_attribute("lepton.train.steps", stats.steps)
                span.set_attribute("lepton.train.loss", stats.loss)

    def skip(self, batch: Batch) -> None:
        """Count a round of a held cycle: its rows are neither trained nor kept."""
        for outcome, count in (("held", len(batch.train) + len(batch.validation)),
                               ("skipped", batch.skipped), ("unlabelled", batch.unlabelled),
                               ("rejected", len(batch.rejected))):
            if count:
                self.metrics.records.add(count, {"outcome": outcome})

    def _unless_parent_marked(self, cycle: Cycle) -> None:
        """Start the weights afresh when `lepton forget` marked the version this cycle
        warm-started from while it buffered rows (collective): DP-SGD has not run yet, so the
        cycle is not lost, as it is where rounds train as they come."""
        parent = cycle.parent  # rank 0's only
        marked = False
        if parent is not None:
            version = parent.card.version
            marked = until_redis(lambda: self.releaser.registry.contains_forgotten(
                self.releaser.model, version), "forgotten mark of the warm start", self.stop)
            if marked:
                log.warning("v%d was marked contains_forgotten while this cycle buffered rows: "
                            "its DP-SGD step starts from fresh weights", version)
        if self.comm.broadcast_json(marked):
            cycle.parent = None
            self._build_engine(cycle, cycle.architecture, None)

    def _drop_forgotten(self, cycle: Cycle) -> None:
        """Leave out this rank's buffered rows of subjects forgotten since they were governed
        (when Redis has lost the forgotten set nobody can tell: the release is refused)."""
        subjects = sorted(cycle.subjects)
        gone = until_redis(lambda: forgotten_among(self.releaser.registry.redis, self.settings,
                                                   subjects), "forgotten subjects", self.stop)
        if gone:
            dropped = cycle.drop_forgotten(gone)
            log.info("left out %d buffered row(s) of %d subject(s) forgotten this cycle",
                     dropped, len(gone))

    def train_private(self, cycle: Cycle) -> None:
        """The cycle's DP-SGD release over every rank's buffered rows (collective)."""
        if cycle.engine is None or cycle.transform is None:
            return
        self._unless_parent_marked(cycle)
        engine, transform = cycle.engine, cycle.transform
        self._drop_forgotten(cycle)
        x, y = cycle.private_rows(transform.dim)
        rows = int(self.comm.sum([float(len(x))])[0])
        if rows == 0:
            return
        privacy = self.spec.privacy
        ref_epsilon = self.settings.trainer_reference_epsilon if cycle.reference else 0.0
        spec = self.spec.model
        cycle.plan = Plan.make(rows, spec.dp_minibatch or self.settings.trainer_minibatch,
                               self.epochs, privacy.epsilon_per_release, privacy.delta,
                               spec.dp_max_grad_norm or self.settings.trainer_dp_max_grad_norm,
                               privacy.max_events_per_subject,
                               extra=(reference_curve(ref_epsilon, len(self.bins)), ref_epsilon)
                               if ref_epsilon > 0 else None)
        with self.tracer.start_as_current_span("trainer train") as span:
            began = time.monotonic()
            stats = engine.train_private(x, y, cycle.plan)
            self.metrics.round_seconds.record(time.monotonic() - began)
            span.set_attribute("lepton.train.rows", stats.rows)
            span.set_attribute("lepton.train.steps", stats.steps)
            span.set_attribute("lepton.train.loss", stats.loss)
            span.set_attribute("lepton.dp.noise_multiplier", cycle.plan.noise_multiplier)
        if cycle.reference is not None and len(x):
            model = engine.model.eval()
            scores = predict_proba(model, torch.from_numpy(x).to(self.device))
            cycle.reference.add_scores(scores.reshape(-1).cpu().numpy().tolist())
