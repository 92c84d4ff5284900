"""The trainer as a federated site (`LEPTON_TRAINER_FEDERATION_SITE`): it follows the
coordinator's signed round tasks on the federation's cluster and answers each one addressed to
it (site_rounds.py does the work), on its own data, keys and governance.

Consumes `federation.rounds` (federation cluster and prefix; tasks not signed by the
coordinator's `federation.pub`, not addressed to this site, past their deadline or for another
spec are skipped or declined) and, per federation, a snapshot of its own `events.governed`;
produces signed answers on `federation.updates` (clipped updates, or masked ones under secure
aggregation (site_secure.py), held-out histograms, key-agreement keys and unmask seeds, or a
declined reason) and its own `release_charge` on `audit.requests`. Nothing else leaves: no
event, no row, no subject id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

import redis
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from services.trainer.config import TrainerSettings
from services.trainer.site_rounds import Federation, SiteRounds
from services.trainer.site_secure import SiteMasking
from services.trainer.snapshot import SnapshotTimeout
from shared.allowlist import AllowList
from shared.datasets import load_spec
from shared.federation import (
    TASK_KINDS,
    Arrays,
    FederationMessageError,
    RoundTask,
    SiteUpdate,
    decode,
    encode,
)
from shared.kafka import DeliveryTimeout, deliver, make_consumer, make_producer, wait_for_kafka
from shared.principals import Principal, public_keys_dir
from shared.readiness import clear_ready, mark_ready
from shared.topics import Topics

log = logging.getLogger(__name__)
KEPT_FEDERATIONS = 4


class FederatedSite:
    """One site of a federation, run by the trainer service."""

    def __init__(self, settings: TrainerSettings, stop: threading.Event) -> None:
        self.settings = settings
        self.stop = stop
        self.spec = load_spec(settings.trainer_dataset, settings.trainer_specs_dir)
        if self.spec.privacy.mode != "model" or not settings.trainer_dp_enabled:
            raise ValueError("a federated site trains with DP-SGD: it needs a `model`-mode "
                             "dataset and LEPTON_TRAINER_DP_ENABLED=true")
        self.site = str(settings.trainer_federation_site)
        self.federation = settings.federation_settings()
        self.topics = Topics(self.federation.topic_prefix)
        keys = settings.trainer_federation_keys_dir or public_keys_dir(settings)
        self.allow = AllowList(keys, {"federation": TASK_KINDS})
        signer = Principal.load(settings, "trainer")
        self.signer = signer
        self.producer = make_producer(settings)
        self.outbox = make_producer(self.federation)
        self.consumer = make_consumer(self.federation, f"lepton-trainer-site-{self.site}",
                                      **{"log_level": 3, "fetch.wait.max.ms": 100})
        self.rounds = SiteRounds(settings, self.spec, signer, self.producer, stop)
        self.masking = SiteMasking(self.site)
        self.states: OrderedDict[str, Federation] = OrderedDict()
        self.answered: set[tuple[str, int, str]] = set()

    def run(self) -> int:
        """Answer round tasks until stopped; 0 on a clean stop."""
        topic = self.topics.federation_rounds
        partitions = wait_for_kafka(
            lambda: self.consumer.list_topics(topic, timeout=15).topics[topic].partitions,
            self.stop, "the federation's round tasks")
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        mark_ready(self.settings, "trainer")
        log.info("site %s follows %s", self.site, topic)
        try:
            while not self.stop.is_set():
                for msg in self.consumer.consume(50, timeout=0.2):
                    if msg.error() is None and not self.stop.is_set():
                        self._handle(msg.value() or b"", msg.headers())
        finally:
            clear_ready(self.settings, "trainer")
            self.consumer.close()
            self.producer.flush(10)
            self.outbox.flush(10)
        return 0

    def _handle(self, value: bytes, headers: object) -> None:
        try:
            task, tensors, _ = decode(value, headers, self.allow, RoundTask)
        except FederationMessageError as error:
            log.warning("site %s skipped a round task: %s", self.site, error)
            return
        key = (task.federation, task.round, task.kind)
        if self.site not in task.sites or key in self.answered or task.deadline < time.time():
            return
        self.answered.add(key)
        if task.dataset != self.spec.name or task.spec_hash != self.spec.spec_hash():
            self._send(self.rounds.declined(task, "another dataset spec"), {})
            return
        try:
            if task.kind in ("keys", "unmask"):
                self._send(self.masking.announce(task) if task.kind == "keys"
                           else self.masking.unmask(task), {})
                return
            if task.kind == "fit" and task.agreement_keys:
                self.masking.require(task)
            state = self.states.get(task.federation)
            if state is None:
                state = self.states[task.federation] = self.rounds.prepare(task)
                while len(self.states) > KEPT_FEDERATIONS:
                    self.states.popitem(last=False)
            if task.kind == "fit":
                update, plain = self.rounds.fit(task, state, tensors)
                if task.agreement_keys and update.kind == "fit":
                    update, plain = self.masking.mask(task, update, plain)
                self._send(update, plain)
            else:
                self._send(self.rounds.evaluate(task, state, tensors), {})
        except SnapshotTimeout as error:
            if not self.stop.is_set():
                self._send(self.rounds.declined(task, f"own data unreadable: {error}"), {})
        except (DeliveryTimeout, redis.ConnectionError, redis.TimeoutError) as error:
            # an outage: this round goes on without us (the coordinator's quorum decides)
            log.warning("site %s missed round %d: %s", self.site, task.round, error)
        except (ValueError, RuntimeError, KeyError) as error:  # a task this site cannot run
            log.warning("site %s declines round %d: %s", self.site, task.round, error)
            self._send(self.rounds.declined(task, f"{type(error).__name__}: {error}"), {})

    def _send(self, update: SiteUpdate, tensors: Arrays) -> None:
        value, headers = encode(update, tensors, self.signer)
        topic = self.topics.federation_updates
        self.outbox.produce(topic, key=update.federation.encode(), value=value, headers=headers)
        deliver(self.outbox, f"{update.kind} update of round {update.round} to {topic}")
        log.info("site %s answered round %d (%s, %d examples)", self.site, update.round,
                 update.kind, update.num_examples)
