"""The trainer's consume → train → release loop, run identically by every rank.

Consumes `events.governed` (this rank's partitions, at the resume position) in rounds; each
round's flags are all-reduced so that every rank agrees on when a round, a cycle and the run
end. A cycle warm-starts from the live model, trains on each round's rows, and at its end
rank 0 evaluates, gates, writes the registry and announces (`models.updates`, decisions on
`audit.requests`); only then does each rank commit its offsets.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Any

import redis
import torch
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaException,
    Producer,
    TopicPartition,
)
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from services.trainer.comm import Comm
from services.trainer.config import TrainerSettings
from services.trainer.cycle import Cycle, build_candidate
from services.trainer.decode import Batch, decode_batch
from services.trainer.dp import Plan
from services.trainer.lineage import furthest
from services.trainer.prefetch import Prefetcher
from services.trainer.release import Releaser
from services.trainer.retry import until_redis
from services.trainer.telemetry import TrainerMetrics
from services.trainer.train import Engine
from shared.datasets import load_spec
from shared.dlq import SEALED_HEADER, DeadLetterSealer
from shared.energy import EnergyMeter
from shared.events import dlq_headers
from shared.governed_mac import GovernedMac
from shared.kafka import make_consumer, make_producer
from shared.models.features import FeatureTransform
from shared.models.nets import architecture, build_model, predict_proba
from shared.models.reference import ReferenceCounter, reference_curve, spec_bins
from shared.models.registry import Registry
from shared.readiness import clear_ready, mark_ready
from shared.retrain import take_retrain
from shared.service_record import count_work, note_consumer
from shared.topics import Topics
from shared.tracing import get_tracer, links_from_headers, messaging_attributes, span_name

log = logging.getLogger(__name__)
POLL_SLICE_S = 0.05


class TrainerLoop:
    """One rank of the trainer."""

    def __init__(self, settings: TrainerSettings, comm: Comm, stop: threading.Event,
                 tracer: trace.Tracer | None = None) -> None:
        self.settings = settings
        self.comm = comm
        self.stop = stop
        self.tracer = tracer or get_tracer(__name__)
        self.spec = load_spec(settings.trainer_dataset, settings.trainer_specs_dir)
        if self.spec.label is None:
            raise ValueError(f"dataset {self.spec.name} has no label field")
        self.label = self.spec.label.name
        privacy = self.spec.privacy
        self.private = privacy.mode == "model" and settings.trainer_dp_enabled
        if privacy.mode == "model" and not self.private and not privacy.allow_non_private:
            raise ValueError(f"dataset {self.spec.name} is in privacy mode `model` without "
                             "`allow_non_private: true`: the trainer must use DP-SGD")
        self.topic = Topics(settings.topic_prefix).governed
        self.device = comm.device
        if self.device.type == "cpu" and settings.trainer_cpu_threads:
            torch.set_num_threads(settings.trainer_cpu_threads)
        # the first optimiser imports torch._dynamo (~1 s): pay it at start, not in a cycle
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        self.consumer: Consumer = make_consumer(
            settings, settings.group_id(), **{"client.id": f"trainer-{comm.rank}",
                                              "log_level": 3})
        self.producer: Producer = make_producer(settings)
        self._sealer = DeadLetterSealer.load(settings)  # the DLQ public key: fail at start
        self.registry = Registry(settings)
        self.releaser = Releaser(settings, self.spec, self.registry, self.producer, self.tracer)
        self.meter = EnergyMeter(self.device, settings.energy_watts_per_core, comm.rank)
        self.metrics = TrainerMetrics()
        self.positions: dict[int, int] = {}
        self.prefetch: Prefetcher | None = None
        self.window: list[dict[str, Any]] = []
        self.released: list[int] = []
        self.seed = settings.trainer_seed
        model = self.spec.model
        self.epochs = settings.trainer_epochs or (
            model.dp_epochs if self.private else None) or model.epochs_per_batch
        # the reference histograms for drift monitoring (not in local mode: its rows are
        # noised per event, so they would not compare with live traffic)
        self.bins = spec_bins(self.spec) if privacy.mode != "local" else []
        self.learning_rate = settings.trainer_learning_rate or (
            self.spec.model.dp_learning_rate if self.private else None
        ) or self.spec.model.learning_rate

    # -- start -----------------------------------------------------------------------------

    def _assign(self) -> None:
        resume: dict[str, int] = {}
        if self.comm.leader:
            until_redis(self.releaser.reconcile, "reconcile", self.stop)
            resume = {str(p): o for p, o in until_redis(
                self.releaser.resume_offsets, "resume offsets", self.stop).items()}
        resume = self.comm.broadcast_json(resume)
        def positions() -> tuple[list[int], list[TopicPartition]]:
            metadata = self.consumer.list_topics(self.topic, timeout=15)
            partitions = sorted(metadata.topics[self.topic].partitions)
            mine = [p for p in partitions if p % self.comm.world == self.comm.rank]
            return mine, self.consumer.committed(
                [TopicPartition(self.topic, p) for p in mine], timeout=15)
        mine, committed = until_redis(positions, "partition metadata", self.stop,
                                      errors=(KafkaException,))
        start = furthest(resume, {tp.partition: tp.offset for tp in committed})
        self.positions = {p: start[p] for p in mine if p in start}
        self.consumer.assign([TopicPartition(self.topic, p, start.get(p, OFFSET_BEGINNING))
                              for p in mine])
        note_consumer(self.settings.group_id(), [self.topic])
        log.info("rank %d consumes %s partitions %s from %s", self.comm.rank, self.topic, mine,
                 {p: start.get(p, "beginning") for p in mine})

    def run(self) -> list[int]:
        """Consume and train until stopped (or idle long enough); returns versions released."""
        self._assign()
        self.prefetch = Prefetcher(self.consumer, self.settings.trainer_batch_size, partial(
            decode_batch, dataset=self.spec.name, label=self.label,
            val_percent=self.settings.trainer_val_percent, mac=GovernedMac.load(self.settings)),
            lag=self.metrics.lag)
        if self.comm.leader:
            mark_ready(self.settings, "trainer")
        try:
            self._loop()
        finally:
            if self.comm.leader:
                clear_ready(self.settings, "trainer")
            self.prefetch.close()
            self.consumer.close()
            self.producer.flush(10)
        return self.released

    def _loop(self) -> None:
        idle_since = time.monotonic()
        cycle: Cycle | None = None
        while True:
            batch, flags = self._poll_round(idle_since)
            total, train_rows, stopping, idle_expired = flags
            if total > 0:
                idle_since = time.monotonic()
                if cycle is None:
                    cycle = self._start_cycle()
                self._train(cycle, batch, int(train_rows))
                cycle.rows += int(total)
                cycle.rounds += 1
                cycle.active_s = time.monotonic() - cycle.started
            elapsed = time.monotonic() - cycle.started if cycle else 0.0
            end_cycle = cycle is not None and (
                stopping or total == 0 or cycle.rows >= self.settings.trainer_cycle_rows
                or self._leader_flag(elapsed >= self.settings.trainer_cycle_s
                                     or self._retrain_asked()))
            if end_cycle and cycle is not None:
                self._finish_cycle(cycle)
                cycle = None
            if stopping or (idle_expired and cycle is None):
                return

    def _retrain_asked(self) -> bool:
        """Rank 0: whether the monitor asked to end the cycle early (shared/retrain.py)."""
        if not self.comm.leader:
            return False
        try:
            reason = take_retrain(self.registry.redis, self.settings, self.releaser.model)
        except redis.RedisError:
            return False
        if reason:
            log.info("ending the cycle early: the monitor asked (%s)", reason)
        return reason is not None

    def _leader_flag(self, value: bool) -> bool:
        return self.comm.sum([1.0 if value and self.comm.leader else 0.0])[0] > 0

    # -- rounds ----------------------------------------------------------------------------

    def _poll_round(self, idle_since: float) -> tuple[Batch, tuple[float, float, bool, bool]]:
        """Take prefetched batches until a rank's batch is full, the max wait passes, or the
        stream runs dry (every rank sees the same summed flags, so all decide alike)."""
        batch = Batch()
        want = self.settings.trainer_batch_size
        started = time.monotonic()
        limit = self.settings.trainer_exit_when_idle_s
        assert self.prefetch is not None
        while True:
            self.metrics.heartbeat.beat()
            got = None
            if not self.stop.is_set() and batch.consumed < want:
                got = self.prefetch.take(want - batch.consumed,
                                         min(POLL_SLICE_S, self.settings.trainer_max_wait_s))
            if got is not None:
                batch.extend(got)
            now = time.monotonic()
            leader = self.comm.leader
            total, new, full, stop, waited, idle = self.comm.sum([
                batch.consumed, got.consumed if got else 0, batch.consumed >= want,
                self.stop.is_set(), leader and now - started >= self.settings.trainer_max_wait_s,
                leader and limit is not None and now - idle_since >= limit])
            if full or stop or waited or (total > 0 and new == 0) or (total == 0 and idle):
                break
        self._reject(batch)
        for partition, offset in batch.next_offsets.items():
            self.positions[partition] = max(self.positions.get(partition, 0), offset)
        train_rows = self.comm.sum([len(batch.train)])[0]
        return batch, (total, train_rows, stop > 0, total == 0 and idle > 0)

    def _reject(self, batch: Batch) -> None:
        for item in batch.rejected:
            headers = dlq_headers(item.headers, reason=item.reason, detail=item.detail,
                                  stage="trainer", exception="EnvelopeError", topic=item.topic,
                                  partition=item.partition, offset=item.offset,
                                  service="trainer")
            value, how = self._sealer.seal(item.value or b"")
            headers.append((SEALED_HEADER, how.value.encode()))
            self.producer.produce(Topics(self.settings.topic_prefix).rejected, key=item.key,
                                  value=value, headers=headers)

    def _start_cycle(self) -> Cycle:
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
                              seed=self.seed + len(self.released))

    def _fit_transform(self, cycle: Cycle) -> None:
        """No live model: the transform comes from the spec's public bounds (no data)."""
        cycle.transform = FeatureTransform.from_spec(self.spec)
        self._publish_transform(cycle.transform)
        arch = architecture(self.spec.model.kind, cycle.transform.dim, self.spec.model.hidden)
        self._build_engine(cycle, arch, None)

    def _publish_transform(self, transform: FeatureTransform) -> None:
        if self.prefetch is not None:
            self.prefetch.transform = transform

    def _train(self, cycle: Cycle, batch: Batch, global_train: int) -> None:
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
            for outcome, count in (("train", len(batch.train)),
                                   ("validation", len(batch.validation)),
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
            with self.tracer.start_as_current_span("trainer train") as span:
                began = time.monotonic()
                x, y = batch.featurize(cycle.transform)
                stats = cycle.engine.train_round(x, y, global_train)
                self.metrics.round_seconds.record(time.monotonic() - began)
                span.set_attribute("lepton.train.rows", stats.rows)
                span.set_attribute("lepton.train.steps", stats.steps)
                span.set_attribute("lepton.train.loss", stats.loss)

    # -- cycle end -------------------------------------------------------------------------

    def _train_private(self, cycle: Cycle) -> None:
        """The cycle's DP-SGD release over every rank's buffered rows (collective)."""
        engine, transform = cycle.engine, cycle.transform
        if engine is None or transform is None:
            return
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

    def _finish_cycle(self, cycle: Cycle) -> None:
        self.producer.flush(15)
        if self.private:
            self._train_private(cycle)
        engine = cycle.engine
        parts = self.comm.gather_json({
            "lineage": cycle.lineage.to_json(), "validation": cycle.validation,
            "positions": {str(p): o for p, o in self.positions.items()},
            "energy": self.meter.read(), "subjects": sorted(cycle.subjects),
            "over_bound": cycle.over_bound,
            "reference": cycle.reference.to_json() if cycle.reference else None,
        })
        state = ({k: v.detach().cpu().clone() for k, v in engine.model.state_dict().items()}
                 if engine is not None else None)
        outcome: dict[str, Any] | None = None
        if self.comm.leader:
            outcome = self._release(cycle, parts, state)
        outcome = self.comm.broadcast_json(outcome)
        self._commit()
        if outcome.get("version"):
            self.released.append(int(outcome["version"]))

    def _release(self, cycle: Cycle, parts: list[dict[str, Any]],
                 state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        for part in parts:
            self.window.extend(part["validation"])
        self.window = self.window[-self.settings.trainer_val_window:]
        resume = furthest(*(part["positions"] for part in parts))
        engine = cycle.engine
        if engine is None or state is None or engine.rows == 0 or cycle.transform is None:
            until_redis(lambda: self.releaser.store_offsets(resume), "resume offsets", self.stop)
            return {"version": None}
        candidate = build_candidate(
            cycle, state, parts, self.settings, world=self.comm.world, device=self.device,
            energy_method=self.meter.describe(), learning_rate=self.learning_rate,
            epochs=self.epochs)
        counts = [part["reference"] for part in parts if part.get("reference")]
        if counts and cycle.plan is not None and cycle.plan.extra_epsilon > 0:
            candidate.extra["reference_counts"] = counts
        links = [Link(context) for context in cycle.batch_spans]
        with self.tracer.start_as_current_span(
                "trainer cycle", links=links,
                attributes={"lepton.cycle.rows": cycle.rows,
                            "lepton.links.recorded": len(links)}):
            card = self.releaser.release(candidate, self.window, resume, self.stop)
        self.metrics.versions.add(1, {"status": card.status})
        if card.epsilon is not None and card.status == "promoted":
            self.metrics.epsilon.add(float(card.epsilon), {"dataset": card.dataset})
        return {"version": card.version, "status": card.status}

    def _commit(self) -> None:
        offsets = [TopicPartition(self.topic, p, o) for p, o in self.positions.items()]
        if offsets and self.prefetch is not None:
            self.prefetch.commit(offsets, self.stop)
