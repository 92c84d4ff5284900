"""Scaling advice per consumer-group service: the fewest replicas that keep lag bounded
(energy-aware: every extra replica costs power, so none beyond what the load needs).

Consumes two lag samples of each group (lag.py, commit markers excluded) and the services'
records in Redis (shared/service_record.py): which group and topics each service consumes, how
many replicas are alive, and what one replica can do (units of work per busy second in full
batches; a service that has only had light load, whose small batches each pay a whole
transaction, has only a lower bound: work per busy second over all its batches). Produces
`Advice`: replicas = ceil((arrival rate + backlog / drain time) / (capacity × utilisation)),
between `min_replicas` and the partition count (a group cannot use more); the metric
`lepton.monitor.scale.replicas{service}`; and KEDA ScaledObjects whose lag threshold is the
backlog one replica works off within the drain time (same numbers).
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
import yaml

from services.monitor.lag import PROBE_MAX, GroupSample, sample_group
from services.monitor.telemetry import MonitorMetrics
from shared.config import LeptonSettings
from shared.service_record import UNITS, read_records
from shared.state import make_redis

log = logging.getLogger(__name__)
DRAIN_S = 30.0
UTILISATION = 0.8
MIN_REPLICAS = 1
ALIVE_S = 60.0


@dataclass(frozen=True)
class Consumes:
    """What a service consumes and what its replicas can do, from its records."""

    service: str
    group: str
    topics: list[str]
    positions_topic: str | None
    replicas: int
    capacity: float | None  # units of work per busy second, per replica, under load
    floor: float | None = None  # a lower bound of capacity when it is not measured
    lag_scaled: bool = True  # False: its commits do not measure a backlog (the trainer)


@dataclass(frozen=True)
class Advice:
    """The recommendation for one service and the numbers behind it."""

    service: str
    group: str
    topics: list[str]
    partitions: int
    replicas: int
    lag: int
    lag_growth_per_s: float
    arrival_per_s: float
    capacity_per_replica: float | None
    recommended: int
    reason: str
    capacity_is_lower_bound: bool = False  # not measured under load: a replica does at least it
    lag_scaled: bool = True  # False: no lag trigger (KEDA) may scale it

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def consumers(client: redis.Redis[bytes], settings: LeptonSettings) -> list[Consumes]:
    """Every service whose records name a consumer group."""
    now = datetime.now(UTC)
    found = []
    for service in UNITS:
        records = [r for r in read_records(client, settings, service) if r.get("consumer")]
        if not records:
            continue
        latest = max(records, key=lambda r: str(r["updated_at"]))
        alive = [r for r in records if now - datetime.fromisoformat(r["updated_at"])
                 < timedelta(seconds=max(ALIVE_S, 3 * settings.energy_record_every_s))]
        consumer = latest["consumer"]
        overall = _per_busy_second(records, "work", "busy_s")
        if consumer.get("batch_size"):
            capacity = _per_busy_second(records, "saturated_work", "saturated_busy_s")
            floor = overall
        else:  # work not done in batches: every unit is measured alike
            capacity, floor = overall, None
        found.append(Consumes(service, consumer["group"], list(consumer["topics"]),
                              consumer.get("positions_topic"), len(alive), capacity, floor,
                              lag_scaled=bool(consumer.get("lag_scaled", True))))
    return found


def _per_busy_second(records: list[dict[str, Any]], work_field: str, busy_field: str
                     ) -> float | None:
    busy = sum(float(r.get(busy_field, 0.0)) for r in records)
    work = sum(int(r.get(work_field, 0)) for r in records)
    return work / busy if busy > 0 and work > 0 else None


def advise(consumes: Consumes, before: GroupSample, after: GroupSample, *,
           min_replicas: int = MIN_REPLICAS, drain_s: float = DRAIN_S,
           utilisation: float = UTILISATION) -> Advice:
    """The fewest replicas whose capacity covers the arrival rate plus the backlog worked off
    within `drain_s`, at most one per partition."""
    seconds = max(after.at - before.at, 1e-3)
    partitions = len(after.end)
    arrival = sum(after.end[s] - before.end.get(s, after.end[s]) for s in after.end) / seconds
    growth = (after.total_lag - before.total_lag) / seconds
    needed = max(arrival, 0.0) + after.total_lag / drain_s
    capacity = consumes.capacity
    bounded = False  # capacity only bounds a replica's from below
    if capacity is None and consumes.replicas:
        done = sum(max(0, after.committed.get(s, 0) - max(before.committed.get(s, 0), 0))
                   for s in after.end) / seconds
        capacity = max(done / consumes.replicas, consumes.floor or 0.0) or None
        keeping_up = after.total_lag <= PROBE_MAX  # a backlog this small is one poll's worth
        bounded = capacity is not None
    else:
        keeping_up = False  # a measured capacity, or none at all: the formula below decides
    if not consumes.lag_scaled:
        recommended = max(min_replicas, consumes.replicas)
        reason = ("not scaled by lag: it commits once per release, so its lag holds the cycle "
                  "in progress; its workers are a training world size (`--workers`), set by "
                  "cycle time, not replicas a lag trigger may add")
    elif needed <= 0:
        recommended, reason = min_replicas, "no backlog and no new records"
    elif capacity is None:
        recommended = max(min_replicas, consumes.replicas)
        reason = "no capacity measured yet: keep the replicas running"
    elif keeping_up:
        # the records done per second only bound a replica's capacity from below, and the
        # replicas running keep up: nothing supports more
        recommended = max(min_replicas, consumes.replicas)
        reason = (f"keeping up (backlog {after.total_lag}, within {PROBE_MAX}); capacity not "
                  f"measured under load, at least {capacity:,.1f}/s a replica")
    else:
        recommended = math.ceil(needed / (capacity * utilisation))
        reason = (f"needs {needed:,.1f}/s (arrival {arrival:,.1f}/s + backlog "
                  f"{after.total_lag} over {drain_s:g} s); one replica does "
                  f"{'at least ' if bounded else ''}{capacity:,.1f}/s at {utilisation:.0%}")
    recommended = max(min_replicas, min(recommended, max(partitions, min_replicas)))
    if after.unread:
        reason += (f"; lag of {len(after.unread)} of {partitions} partitions unknown (their "
                   "positions were not read in time)")
    return Advice(consumes.service, consumes.group, consumes.topics, partitions,
                  consumes.replicas, after.total_lag, growth, arrival, capacity, recommended,
                  reason, capacity_is_lower_bound=bounded, lag_scaled=consumes.lag_scaled)


def sample(settings: LeptonSettings, consumes: Consumes) -> GroupSample:
    """A lag sample of the service's group."""
    return sample_group(settings, consumes.group, consumes.topics, consumes.positions_topic)


def keda_scaled_object(advice: Advice, bootstrap: str, *, drain_s: float = DRAIN_S,
                       min_replicas: int = MIN_REPLICAS) -> str:
    """A KEDA ScaledObject (Kafka scaler) for the service's group: lag threshold = the backlog
    one replica works off in `drain_s`, persistent (commit-marker) lag excluded."""
    capacity = advice.capacity_per_replica or 1.0
    threshold = max(1, round(capacity * UTILISATION * drain_s))
    triggers = [{"type": "kafka", "metadata": {
        "bootstrapServers": bootstrap, "consumerGroup": advice.group, "topic": topic,
        "lagThreshold": str(threshold), "activationLagThreshold": "1",
        "offsetResetPolicy": "earliest", "excludePersistentLag": "true",
        "limitToPartitionsWithLag": "true"}} for topic in advice.topics]
    doc = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
           "metadata": {"name": f"lepton-{advice.service}", "annotations": {
               "lepton/derived-from": f"{'at least ' if advice.capacity_is_lower_bound else ''}"
                                      f"{capacity:,.1f} {advice.service} records/s per replica "
                                      f"at {UTILISATION:.0%}, backlog drained in {drain_s:g} s"}},
           "spec": {"scaleTargetRef": {"name": f"lepton-{advice.service}"},
                    "minReplicaCount": min_replicas,
                    "maxReplicaCount": max(advice.partitions, min_replicas),
                    "pollingInterval": 15, "cooldownPeriod": 300, "triggers": triggers}}
    return yaml.safe_dump(doc, sort_keys=False)


class ScaleWatch(threading.Thread):
    """Recomputes `lepton.monitor.scale.replicas{service}` every `monitor_scale_every_s`."""

    def __init__(self, settings: LeptonSettings, metrics: MonitorMetrics,
                 stop: threading.Event, every_s: float | None = None) -> None:
        super().__init__(name="monitor-scale", daemon=True)
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self.every_s = every_s or float(getattr(settings, "monitor_scale_every_s", 15.0))
        self.previous: dict[str, GroupSample] = {}

    def run(self) -> None:
        """Sample every group, advise, set the gauge; until stopped."""
        client = make_redis(self.settings)
        while not self.stop.wait(self.every_s):
            try:
                found = consumers(client, self.settings)
            except Exception as error:  # the advice is best-effort; the monitor goes on
                log.warning("scaling advice skipped: %s", error)
                continue
            for consumes in found:  # one group that cannot be sampled skips only itself
                try:
                    now = sample(self.settings, consumes)
                except Exception as error:
                    log.warning("scaling advice for %s skipped: %s", consumes.service, error)
                    continue
                before = self.previous.get(consumes.service)
                self.previous[consumes.service] = now
                if before is not None:
                    advice = advise(consumes, before, now)
                    self.metrics.set("lepton.monitor.scale.replicas", advice.recommended,
                                     service=advice.service)
