"""The trainer's consume → train → release loop, run identically by every rank.

Consumes `events.governed` (this rank's partitions, at the resume position) in rounds
(rounds.py); each round's flags are all-reduced so that every rank agrees on when a round, a
cycle and the run end. A cycle warm-starts from the live model and trains on each round's rows
(training.py); at its end rank 0 evaluates, gates, writes the registry and announces
(`models.updates`, decisions on `audit.requests`); only then does each rank commit its offsets.

Quality hold: when the spec has `quality.min_index`, rank 0 reads ingest's signed quality
windows (quality_feed.py) and, before each round trains and again before the cycle's release,
judges the index of the windows the cycle's data came from (quality_hold.py). A held cycle
trains nothing more, releases nothing and spends no budget: its offsets are committed (its rows
are skipped for good) and a `training_held` decision goes to `audit.requests`.
"""

from __future__ import annotations

import logging
import math
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
from opentelemetry.trace import Link

from services.trainer.comm import Comm
from services.trainer.config import TrainerSettings
from services.trainer.cycle import Cycle, build_candidate
from services.trainer.decode import decode_batch
from services.trainer.forgotten import forgotten_among, without_forgotten
from services.trainer.lineage import furthest
from services.trainer.prefetch import Prefetcher
from services.trainer.quality_feed import QualityFeed
from services.trainer.quality_hold import Hold, hold_decision, judge
from services.trainer.release import Releaser
from services.trainer.retry import REDIS_OR_BROKER_DOWN, until_redis
from services.trainer.rounds import RoundReader
from services.trainer.telemetry import TrainerMetrics
from services.trainer.training import CycleTrainer, is_private
from shared.datasets import load_spec
from shared.decisions import publish_decision
from shared.dlq import DeadLetterSealer
from shared.energy import EnergyMeter
from shared.governed_mac import GovernedMac
from shared.kafka import make_consumer, make_producer
from shared.models.registry import Registry
from shared.readiness import clear_ready, mark_ready
from shared.retrain import take_retrain
from shared.service_record import note_consumer
from shared.topics import Topics
from shared.tracing import get_tracer

log = logging.getLogger(__name__)


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
        is_private(settings, self.spec)  # refuse a forbidden non-private run before connecting
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
        self.trainer = CycleTrainer(settings, self.spec, comm, self.releaser, self.meter,
                                    self.metrics, self.tracer, stop, self.topic)
        self.min_index = self.spec.quality.min_index
        self.quality = QualityFeed(settings, self.spec.name, self.metrics) \
            if comm.leader and self.min_index is not None else None
        self.positions: dict[int, int] = {}
        self.prefetch: Prefetcher | None = None
        self.window: list[dict[str, Any]] = []
        self.released: list[int] = []

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
        # it commits once per release: its lag holds the cycle in progress, not a backlog
        note_consumer(self.settings.group_id(), [self.topic], lag_scaled=False)
        log.info("rank %d consumes %s partitions %s from %s", self.comm.rank, self.topic, mine,
                 {p: start.get(p, "beginning") for p in mine})

    def run(self) -> list[int]:
        """Consume and train until stopped (or idle long enough); returns versions released."""
        self._assign()
        if self.quality is not None:
            self.quality.start(self.stop)
        self.prefetch = Prefetcher(self.consumer, self.settings.trainer_batch_size, partial(
            decode_batch, dataset=self.spec.name, label=self.label,
            val_percent=self.settings.trainer_val_percent, mac=GovernedMac.load(self.settings)),
            lag=self.metrics.lag)
        self.trainer.prefetch = self.prefetch
        self.rounds = RoundReader(self.settings, self.comm, self.prefetch, self.metrics,
                                  self.producer, self._sealer, self.stop, self.positions,
                                  None if self.trainer.private else partial(
                                      forgotten_among, self.registry.redis, self.settings))
        if self.comm.leader:
            mark_ready(self.settings, "trainer")
        try:
            self._loop()
        finally:
            if self.comm.leader:
                clear_ready(self.settings, "trainer")
            if self.quality is not None:
                self.quality.close()
            self.prefetch.close()
            self.consumer.close()
            self.producer.flush(10)
        return self.released

    def _loop(self) -> None:
        idle_since = time.monotonic()
        cycle: Cycle | None = None
        while True:
            batch, flags = self.rounds.poll(idle_since)
            if flags.total > 0:
                idle_since = time.monotonic()
                if cycle is None:
                    cycle = self.trainer.start()
                cycle.saw(batch.times)
                if not cycle.held:
                    self._check_quality(cycle)
                if cycle.held:
                    self.trainer.skip(batch)
                else:
                    self.trainer.train(cycle, batch, int(flags.train_rows))
                cycle.rows += int(flags.total)
                cycle.rounds += 1
                cycle.active_s = time.monotonic() - cycle.started
            elapsed = time.monotonic() - cycle.started if cycle else 0.0
            end_cycle = cycle is not None and (
                flags.stopping or flags.total == 0
                or cycle.rows >= self.settings.trainer_cycle_rows
                or self._leader_flag(elapsed >= self.settings.trainer_cycle_s
                                     or self._retrain_asked()))
            if end_cycle and cycle is not None:
                self._finish_cycle(cycle)
                cycle = None
                idle_since = time.monotonic()  # a release is not time spent waiting for data
            if flags.stopping or (flags.idle_expired and cycle is None):
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

    # -- cycle end -------------------------------------------------------------------------

    def _check_quality(self, cycle: Cycle) -> None:
        """Hold the cycle when its data's quality index is below the spec's floor (collective:
        rank 0 judges the data window of every rank)."""
        if self.min_index is None:
            return
        first, last = cycle.times or (math.inf, -math.inf)
        low, negative_high = self.comm.minimum([first, -last])
        hold: Hold | None = None
        if self.quality is not None and low <= -negative_high:
            hold = judge(self.quality.index_for(low, -negative_high), self.min_index)
        if self._leader_flag(hold is not None):
            cycle.held, cycle.hold = True, hold

    def _hold(self, cycle: Cycle) -> None:
        """A held cycle's end: no training, release or charge; its rows are skipped for good
        (resume position and offsets), and rank 0 records the `training_held` decision."""
        parts = self.comm.gather_json({"positions": {str(p): o for p, o in
                                                     self.positions.items()}})
        if self.comm.leader and cycle.hold is not None:
            resume = furthest(*(part["positions"] for part in parts))
            until_redis(lambda: self.releaser.store_offsets(resume), "resume offsets", self.stop)
            decision = hold_decision(cycle.hold, actor="trainer", dataset=self.spec.name,
                                     model=self.releaser.model, rows=cycle.rows)
            until_redis(lambda: publish_decision(self.producer, self.settings, decision,
                                                 signer=self.releaser.signer),
                        "training_held decision", self.stop, errors=REDIS_OR_BROKER_DOWN)
            self.metrics.held.add(1, {"dataset": self.spec.name})
            log.warning("cycle held: %s quality index %.4f below min_index %.4f over %s .. %s "
                        "(%d rows skipped)", self.spec.name, cycle.hold.index.index,
                        cycle.hold.min_index, decision.detail["window_start"],
                        decision.detail["window_end"], cycle.rows)
        self._commit()

    def _finish_cycle(self, cycle: Cycle) -> None:
        self.producer.flush(15)
        if not cycle.held:
            self._check_quality(cycle)
        if cycle.held:
            self._hold(cycle)
            return
        if self.trainer.private:
            self.trainer.train_private(cycle)
        engine = cycle.engine
        if engine is not None:
            engine.finish()
        parts = self.comm.gather_json({
            "lineage": cycle.lineage.to_json(), "validation": cycle.validation,
            "positions": {str(p): o for p, o in self.positions.items()},
            "energy": self.meter.read(), "subjects": sorted(cycle.subjects),
            "over_bound": cycle.over_bound, "forgotten": cycle.forgotten_rows,
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
            self.trainer.releases = len(self.released)

    def _release(self, cycle: Cycle, parts: list[dict[str, Any]],
                 state: dict[str, torch.Tensor] | None) -> dict[str, Any]:
        for part in parts:
            self.window.extend(part["validation"])
        self.window = until_redis(lambda: without_forgotten(
            self.releaser.registry.redis, self.settings,
            self.window[-self.settings.trainer_val_window:]), "forgotten subjects", self.stop)
        resume = furthest(*(part["positions"] for part in parts))
        engine = cycle.engine
        if engine is None or state is None or engine.rows == 0 or cycle.transform is None:
            until_redis(lambda: self.releaser.store_offsets(resume), "resume offsets", self.stop)
            return {"version": None}
        candidate = build_candidate(
            cycle, state, parts, self.settings, world=self.comm.world, device=self.device,
            energy_method=self.meter.describe(), learning_rate=self.trainer.learning_rate,
            epochs=self.trainer.epochs)
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
