"""The governance process: the governance stage on the shared transactional runtime.

Consumes `events.clean` and `audit.requests` (one consumer group), and per batch: govern and
seal (processor.py; charges, audit leaves and checkpoints are durable on disk first); the
runtime (shared/stage) then produces `events.governed`, `audit.log`, dead letters and the
input positions with the input offsets in one transaction, so outputs and offsets become
visible together or not at all. After a crash the uncommitted batch is consumed again and
reuses its ledger charges and audit leaves. Signed checkpoints of the audit log ride along
with any transaction, or alone when they are due; each partition's latest one is sent again at
start, as a predecessor may have signed it and stopped before its transaction committed.
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import redis
from confluent_kafka import Message
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry.trace import Tracer

from services.governance.charge_log import ChargeLog
from services.governance.checkpoints import Checkpoint
from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger
from services.governance.policy import Policy
from services.governance.processor import Processor
from services.governance.releases import ReleaseLedger
from services.governance.sealing import AUDIT_TYPE_HEADER
from services.governance.store import AuditStore
from services.governance.telemetry import GovernanceMetrics
from shared.events import CONTENT_TYPE_JSON, Header
from shared.kafka import ensure_topics
from shared.signing import load_signing_key
from shared.stage import Output, TransactionalRuntime
from shared.state import make_redis
from shared.topics import Topic, Topics

log = logging.getLogger(__name__)


class AlreadyRunning(RuntimeError):
    """Another governance process holds this data directory."""


@contextmanager
def exclusive(directory: Path) -> Iterator[None]:
    """Hold the governance data directory's lock (one writer of the audit and ledger stores)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "governance.lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another governance process is using {directory}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class GovernanceStage:
    """Govern and seal a batch; checkpoint the audit log when due."""

    name = "governance"
    waits_out: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)

    def __init__(self, settings: GovernanceSettings, processor: Processor, store: AuditStore,
                 key: Ed25519PrivateKey) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.inputs = [self.topics.clean, self.topics.audit_requests]
        self.outputs = [self.topics.governed, self.topics.audit_log, self.topics.rejected]
        self.processor = processor
        self.store = store
        self.key = key
        self._last_signed = time.monotonic()
        self._resend = [part.latest for part in store.parts.values() if part.latest is not None]

    def process(self, batch: list[Message]) -> list[Output]:
        """Govern the batch (idempotent: charges by id, audit leaves by identity)."""
        return self.processor.process(batch)

    def due(self, final: bool) -> list[Output]:
        """Signed checkpoints of partitions with enough (or old enough) unsigned leaves."""
        s = self.settings
        late = time.monotonic() - self._last_signed >= s.governance_checkpoint_seconds
        outputs = [self._output(checkpoint) for checkpoint in self._resend]
        self._resend = []
        signed = False
        for partition in self.store.parts:
            unsigned = self.store.unsigned(partition)
            if unsigned == 0 or not (final or late or unsigned >= s.governance_checkpoint_every):
                continue
            outputs.append(self._output(self.store.checkpoint(partition, self.key)))
            self.processor.metrics.checkpoints.add(1)
            signed = True
        if signed or final:
            self._last_signed = time.monotonic()
        return outputs

    def _output(self, checkpoint: Checkpoint) -> Output:
        return Output(self.topics.audit_log, b"checkpoint", orjson.dumps(checkpoint.model_dump()),
                      [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON),
                       (AUDIT_TYPE_HEADER, b"checkpoint")], checkpoint.partition)

    def committed(self, batch: list[Message], seconds: float) -> None:
        """Nothing beyond the runtime's batch metrics."""

    def aborted(self, batch: list[Message]) -> None:
        """Nothing: reprocessing reuses the batch's charges and leaves."""


class GovernanceService:
    """Opens the stores and runs the governance stage until `stop` is set."""

    def __init__(self, settings: GovernanceSettings, stop: threading.Event,
                 tracer: Tracer | None = None) -> None:
        self.settings = settings
        self.tracer = tracer
        self.stop = stop
        self.topics = Topics(settings.topic_prefix)
        self.metrics = GovernanceMetrics()
        self.runtime: TransactionalRuntime | None = None

    @property
    def processed(self) -> int:
        """Records committed so far."""
        return self.runtime.processed if self.runtime is not None else 0

    def run(self) -> int:
        """Open the stores, then consume, govern, produce and commit until stopped; the exit
        status."""
        s = self.settings
        with exclusive(s.governance_dir()):
            counts = ensure_topics(s, [self.topics.audit_log], stop=self.stop)
            client = make_redis(s)
            charge_log = ChargeLog(s.ledger_dir(), segment_bytes=s.governance_segment_bytes,
                                   fsync=s.governance_fsync)
            charge_log.open()
            ledger = Ledger(client, s, charge_log)
            rebuilt = ledger.ensure_ready()
            if rebuilt:
                log.warning("privacy ledger was missing from Redis: rebuilt from %d charges",
                            rebuilt)
            releases = ReleaseLedger(client, s, s.ledger_dir() / "releases",
                                     fsync=s.governance_fsync)
            if replayed := releases.ensure_ready():
                log.warning("release ledger was missing from Redis: rebuilt from %d releases",
                            replayed)
            for dataset in releases.datasets():
                self.metrics.set_subject_max(dataset, releases.max_subject_epsilon(dataset))
            store = AuditStore(s.audit_dir(), self.topics.audit_log,
                               segment_bytes=s.governance_segment_bytes, fsync=s.governance_fsync)
            store.open(counts[self.topics.audit_log])
            key = load_signing_key(s.governance_audit_key_file, s.audit_key_path(),
                                   "LEPTON_GOVERNANCE_AUDIT_KEY_FILE")
            processor = Processor(s, store, ledger, Policy(client, s, s.audit_dir()), self.metrics,
                                  counts[self.topics.audit_log], self.tracer, releases)
            self.runtime = TransactionalRuntime(
                s, GovernanceStage(s, processor, store, key), self.stop,
                group_id=s.group_id(), transactional_id=s.transactional_id(),
                positions_topic=self.topics.name(Topic.GOVERNANCE_OFFSETS),
                batch_size=s.governance_batch_size, poll_timeout_s=s.governance_poll_timeout_s,
                positions_read_timeout_s=60.0,
                consumer_config={"session.timeout.ms": s.governance_session_timeout_ms,
                                 "fetch.wait.max.ms": s.governance_fetch_wait_ms})
            log.info("governance DP %s", "on" if s.governance_dp_enabled else "OFF")
            try:
                return self.runtime.run()
            finally:
                store.close()
                charge_log.close()
                releases.close()
                client.close()
