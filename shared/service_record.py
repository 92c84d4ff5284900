"""The small record every service process keeps in Redis: its energy, the work it did and what
it consumes, the numbers behind `lepton sustainability report` and `lepton scale advise`.

Produces, every `LEPTON_ENERGY_RECORD_EVERY_S` and at stop, the JSON value of field
`<host>:<pid>:<start>` in the Redis hash `<prefix>services:<service>`: joules since start
(shared/energy.py: RAPL share or a labelled estimate), CPU seconds, units of work (events,
predictions, training samples, monitored records; per key where a service splits them, e.g.
serving per model version), busy seconds (time spent processing them), the same two for the
batches that were full (`saturated_*`: what one replica does under load, where small batches
of a light load only bound it from below, each paying a whole transaction), the consumer group,
its input topics and batch size (and whether its lag measures a backlog), and the carbon
intensity in force.
Records of stopped processes stay: the energy they used still counts. Also exports
`lepton.<service>.energy.joules` and `lepton.<service>.energy.joules_per_<unit>`.

Redis being away never slows a service: writes use a short timeout and are skipped (logged)
when it is down; the next write carries the totals.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared.carbon import CarbonIntensity, carbon_intensity
from shared.config import LeptonSettings
from shared.energy import ProcessEnergy
from shared.state import rkey

log = logging.getLogger(__name__)

UNITS = {"ingest": "event", "governance": "event", "trainer": "sample",
         "serving": "prediction", "monitor": "record"}
FULL = 0.9  # a batch of at least this share of the batch size was taken from a backlog
_current: ServiceRecord | None = None


def records_key(settings: LeptonSettings, service: str) -> str:
    """The Redis hash holding every process record of `service`."""
    return rkey(settings, "services", service)


def count_work(units: int, seconds: float = 0.0, key: str = "") -> None:
    """Count `units` of this process's work that took `seconds` (no-op without a record)."""
    if _current is not None:
        _current.add(units, seconds, key)


def note_consumer(group: str, topics: Iterable[str], positions_topic: str | None = None,
                  batch_size: int | None = None, *, lag_scaled: bool = True) -> None:
    """Name the consumer group, input topics and batch size this process works with;
    `lag_scaled=False` for one whose commits do not measure a backlog (the trainer's)."""
    if _current is not None:
        _current.consumer = {"group": group, "topics": sorted(topics),
                             "positions_topic": positions_topic, "batch_size": batch_size,
                             "lag_scaled": lag_scaled}


class ServiceRecord:
    """This process's record: counts work, meters energy, writes to Redis in a thread."""

    def __init__(self, service: str, settings: LeptonSettings, *,
                 meter: ProcessEnergy | None = None) -> None:
        self.service = service
        self.settings = settings
        self.unit = UNITS.get(service, "event")
        self.meter = meter or ProcessEnergy(settings.energy_watts_per_core)
        self.carbon: CarbonIntensity = carbon_intensity(settings)
        self.started = datetime.now(UTC)
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{int(time.time())}"
        self.consumer: dict[str, Any] | None = None
        self.work: Counter[str] = Counter()
        self.busy_s = 0.0
        self.saturated_work = 0
        self.saturated_busy_s = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._redis = redis.Redis.from_url(settings.redis_url, socket_timeout=1,
                                           socket_connect_timeout=1,
                                           retry=Retry(NoBackoff(), 0))
        meter_ = metrics.get_meter(f"lepton.{service}")
        meter_.create_observable_counter(
            f"lepton.{service}.energy.joules", callbacks=[self._observe_joules], unit="J",
            description="Energy this process used (method: rapl or estimate)")
        meter_.create_observable_gauge(
            f"lepton.{service}.energy.joules_per_{self.unit}", callbacks=[self._observe_per],
            unit="J", description=f"Joules per {self.unit} since start")

    def add(self, units: int, seconds: float, key: str) -> None:
        """Count work (thread-safe)."""
        batch_size = (self.consumer or {}).get("batch_size")
        with self._lock:
            self.work[key] += units
            self.busy_s += seconds
            if seconds > 0 and batch_size and units >= FULL * batch_size:
                self.saturated_work += units
                self.saturated_busy_s += seconds

    def snapshot(self) -> dict[str, Any]:
        """The record as written to Redis."""
        joules = self.meter.read()
        with self._lock:
            work = dict(self.work)
            busy = self.busy_s
            saturated = {"saturated_work": self.saturated_work,
                         "saturated_busy_s": self.saturated_busy_s}
        return {"service": self.service, "instance": self.instance,
                "started_at": self.started.isoformat(),
                "updated_at": datetime.now(UTC).isoformat(),
                "energy": {"joules": joules, "cpu_s": self.meter.cpu_s,
                           "method": self.meter.describe(),
                           "estimate": self.meter.is_estimate},
                "unit": self.unit, "work": sum(work.values()),
                "work_by_key": {k: v for k, v in work.items() if k}, "busy_s": busy,
                **saturated, "consumer": self.consumer, "carbon": self.carbon.to_dict()}

    def write(self) -> bool:
        """Write the record now; False when Redis is away (the next write catches up)."""
        try:
            self._redis.hset(records_key(self.settings, self.service), self.instance,
                             orjson.dumps(self.snapshot()))
            return True
        except redis.RedisError as error:
            log.debug("service record not written: %s", error)
            return False

    def start(self) -> ServiceRecord:
        """Become this process's record and write it periodically."""
        global _current
        _current = self
        self._thread = threading.Thread(target=self._run, name="service-record", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop writing; one last write of the totals."""
        global _current
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self.write()
        self._redis.close()
        if _current is self:
            _current = None

    def _run(self) -> None:
        while not self._stop.wait(self.settings.energy_record_every_s):
            self.write()

    def _observe_joules(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.meter.read(), {"method": self.meter.method})]

    def _observe_per(self, _options: CallbackOptions) -> Iterable[Observation]:
        total = sum(self.work.values())
        return [Observation(self.meter.read() / total)] if total else []


def read_records(client: redis.Redis[bytes], settings: LeptonSettings, service: str
                 ) -> list[dict[str, Any]]:
    """Every process record of `service` (unreadable ones skipped)."""
    found = []
    for raw in client.hvals(records_key(settings, service)):
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found
