"""Hot-swap on `models.updates`: a thread reads every announcement (each replica reads all of
them, from the end of the topic at startup, without a consumer group), continues the trace
from the message headers into a `serving swap` span, checks the announcement (`gate.py`: the
announcer's signature, sequence, version order, the signed card and its status) and only then
applies the announced action through the Fleet: load beside the live version, verify sha256 +
Ed25519 signature, warm up, swap the reference, drain the old. A refused version is logged and,
when the announcement itself was genuine, recorded; the live one keeps serving.

Startup order matters: the consumer is positioned at the current end BEFORE the registry's
live versions are loaded, so an announcement racing the startup is seen (and applying it
twice is harmless: announcements are idempotent desired states). When Kafka does not answer
within `FIRST_ATTEMPT_S` at startup (down, frozen, partitioned) or the topic does not exist
yet, the registry's live versions are loaded at once, so predictions do not wait for Kafka, and
loaded again once the consumer is positioned."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING

from opentelemetry.trace import Status, StatusCode

from services.serving.control import ORIGIN_HEADER
from services.serving.errors import ServingError
from services.serving.fleet import Fleet
from services.serving.gate import AnnouncementGate, AnnouncementRefused
from services.serving.wire import message_headers
from shared.events import EnvelopeError, ModelAnnouncement, decode
from shared.topics import Topics
from shared.tracing import get_tracer, process_span

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message, TopicPartition

    from services.serving.config import ServingSettings
    from services.serving.control import RolloutControl

log = logging.getLogger(__name__)
_tracer = get_tracer(__name__)
FIRST_ATTEMPT_S = 3.0  # how long predictions wait for Kafka at startup before the registry
ATTEMPT_S = 10.0


class AnnouncementWatcher:
    """Follows `models.updates` in a background thread and applies each announcement."""

    def __init__(self, settings: ServingSettings, fleet: Fleet, control: RolloutControl,
                 stop: threading.Event) -> None:
        self.settings = settings
        self.fleet = fleet
        self.control = control
        self.stop = stop
        self.topic = Topics(settings.topic_prefix).models
        self.positioned = threading.Event()
        self.initial_loaded = threading.Event()
        self.applied = 0
        self.refused = 0
        self.gate = AnnouncementGate(settings, fleet.loader.registry)
        self._thread = threading.Thread(target=self._run, name="serving-hot-swap", daemon=True)

    def start(self) -> None:
        """Start following announcements (and load the registry's live versions)."""
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to finish after `stop` is set."""
        self._thread.join(timeout)

    def _position(self, consumer: Consumer, timeout: float = ATTEMPT_S) -> bool:
        """One attempt to assign `consumer` at the announcements' current end; False when
        Kafka does not answer within `timeout` s per call or the topic does not exist yet."""
        from confluent_kafka import KafkaException

        try:
            positions = self._ends(consumer, timeout)
        except KafkaException as error:
            log.warning("%s: Kafka does not answer (%s)", self.topic, error)
            return False
        if not positions:
            log.info("waiting for topic %s", self.topic)
            return False
        consumer.assign(positions)
        return True

    def _ends(self, consumer: Consumer, timeout: float) -> list[TopicPartition]:
        """Each partition of the announcements topic at its high watermark (none while the
        topic does not exist yet)."""
        from confluent_kafka import TopicPartition

        info = consumer.list_topics(self.topic, timeout=timeout).topics.get(self.topic)
        if info is None or info.error is not None or not info.partitions:
            return []
        return [TopicPartition(self.topic, p, consumer.get_watermark_offsets(
            TopicPartition(self.topic, p), timeout=timeout)[1]) for p in sorted(info.partitions)]

    def _run(self) -> None:
        from shared.kafka import make_consumer

        consumer = None
        try:
            self.gate.start_floor(self.fleet.fixed_names or self.fleet.loader.registry_models())
            consumer = make_consumer(self.settings, f"{self.settings.serving_group}-models-"
                                     f"{uuid.uuid4().hex[:8]}", log_level=3,
                                     **{"fetch.wait.max.ms": 50})
            if not self._position(consumer, FIRST_ATTEMPT_S):
                # answer from the registry now; once positioned, load its live versions again
                # to catch up with releases announced meanwhile
                self.fleet.load_initial()
                self.initial_loaded.set()
                while not self._position(consumer):
                    if self.stop.wait(1.0):
                        return
            self.positioned.set()
            self.fleet.load_initial()
            self.initial_loaded.set()
            while not self.stop.is_set():
                message = consumer.poll(0.2)
                if message is not None and message.error() is None:
                    self.handle(message)
        except Exception:
            log.exception("hot-swap watcher stopped on an error")
        finally:
            self.positioned.set()
            self.initial_loaded.set()
            if consumer is not None:
                consumer.close()

    def handle(self, message: Message) -> None:
        """Apply one announcement inside a swap span continuing the announcer's trace."""
        key = (message.key() or b"").decode("utf-8", "replace")
        headers = message_headers(message)
        if any(k == ORIGIN_HEADER and v == self.control.origin.encode() for k, v in headers):
            return
        with process_span(_tracer, self.topic, headers,
                          partition=message.partition(), offset=message.offset(), key=key):
            try:
                announcement = decode(ModelAnnouncement, message.value() or b"")
            except EnvelopeError as error:
                log.warning("ignoring a bad announcement at %s/%s@%s: %s", self.topic,
                            message.partition(), message.offset(), error)
                return
            if not self.fleet.hosts_model(announcement.model):
                return
            self.apply(announcement)

    def apply(self, announcement: ModelAnnouncement) -> None:
        """Apply `announcement` in a `serving swap` span; refusals keep the live version."""
        attributes: dict[str, str | int] = {"lepton.model": announcement.model,
                      "lepton.model.version": announcement.version,
                      "lepton.rollout.action": announcement.action}
        with _tracer.start_as_current_span("serving swap", attributes=attributes) as span:
            try:
                self.gate.check(announcement, self.fleet.live_version(announcement.model))
            except AnnouncementRefused as error:
                self.refused += 1
                span.set_status(Status(StatusCode.ERROR, str(error)))
                span.set_attribute("lepton.swap.outcome", "refused")
                if error.verified:
                    self.control.refused(announcement.model, announcement.version,
                                         announcement.action, str(error), announcement.dataset)
                else:
                    log.warning("ignoring announcement of %s v%d: %s", announcement.model,
                                announcement.version, error)
                return
            try:
                rollout = self.fleet.apply(announcement.action, announcement.model,
                                           announcement.version, announcement.share,
                                           expect_sha256=announcement.sha256)
            except ServingError as error:
                self.refused += 1
                span.set_status(Status(StatusCode.ERROR, str(error)))
                span.set_attribute("lepton.swap.outcome", "refused")
                self.control.refused(announcement.model, announcement.version,
                                     announcement.action, str(error), announcement.dataset)
                return
            self.applied += 1
            span.set_attribute("lepton.swap.outcome", "applied")
            span.set_attribute("lepton.model.live_version", rollout.live.version)
            log.info("%s %s v%d applied: live v%d%s", announcement.action, announcement.model,
                     announcement.version, rollout.live.version,
                     f", {rollout.mode} v{rollout.candidate.version}"
                     if rollout.candidate is not None else "")
