"""The coordinator's inbox: site answers from `federation.updates`, collected per round until
every selected site answered or the round's deadline passed.

Consumes `federation.updates` from the position it had when the coordinator started (nothing
older is read); every record is verified (signature by an allowed site's key, the signer is the
site the answer names) before it is parsed. Produces, per round, the answers of the selected
sites, and a record of every answer it drops: late (an earlier round's, or this round's after
its deadline), of a kind the round does not expect, from a site not selected, for another
federation, or failing verification.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

from shared.allowlist import AllowList
from shared.config import LeptonSettings
from shared.federation import Arrays, FederationMessageError, SiteUpdate, decode
from shared.kafka import make_consumer, wait_for_kafka
from shared.topics import Topics

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """One verified site answer."""

    update: SiteUpdate
    tensors: Arrays
    size: int
    received: float


@dataclass
class Inbox:
    """Collects verified answers of the current round; records what it drops."""

    settings: LeptonSettings
    allow: AllowList
    stop: threading.Event | None = None  # with it, an unreachable broker is waited for
    dropped: list[dict[str, Any]] = field(default_factory=list)
    bytes_in: int = 0

    def __post_init__(self) -> None:
        topic = Topics(self.settings.topic_prefix).federation_updates
        self.consumer = make_consumer(self.settings, f"lepton-federation-{topic}",
                                      **{"log_level": 3, "fetch.wait.max.ms": 50})
        self.consumer.assign(wait_for_kafka(lambda: self._ends(topic), self.stop,
                                            "the federation's answers"))

    def _ends(self, topic: str) -> list[TopicPartition]:
        """Each of `topic`'s partitions at its high watermark."""
        partitions = self.consumer.list_topics(topic, timeout=15).topics[topic].partitions
        return [TopicPartition(topic, p, self.consumer.get_watermark_offsets(
            TopicPartition(topic, p), timeout=15, cached=False)[1]) for p in partitions]

    def _drop(self, reason: str, update: SiteUpdate | None = None, **extra: Any) -> None:
        entry = {"reason": reason, "at": round(time.time(), 3), **extra}
        if update is not None:
            entry.update(site=update.site, round=update.round, kind=update.kind,
                         federation=update.federation)
        self.dropped.append(entry)
        log.warning("dropped a site answer: %s", entry)

    def collect(self, federation: str, round_: int, expected: set[str], deadline: float,
                stop: threading.Event, kinds: frozenset[str] | None = None
                ) -> dict[str, Answer]:
        """Answers to round `round_` of `federation` from `expected` sites (of `kinds`, when
        given: others are dropped), until all came or `deadline` (Unix time) passed."""
        answers: dict[str, Answer] = {}
        while set(answers) < expected and time.time() < deadline and not stop.is_set():
            for msg in self.consumer.consume(100, timeout=0.1):
                if msg.error() is not None:
                    continue
                value = msg.value() or b""
                self.bytes_in += len(value)
                try:
                    update, tensors, signer = decode(value, msg.headers(), self.allow,
                                                     SiteUpdate)
                except FederationMessageError as error:
                    self._drop("unverified", error=str(error)[:200])
                    continue
                if signer != update.site:
                    self._drop("signer is not the site named", update, signer=signer)
                elif update.federation != federation:
                    self._drop("another federation", update)
                elif update.round != round_ or time.time() > deadline:
                    self._drop("late", update, current_round=round_)
                elif kinds is not None and update.kind not in kinds:
                    self._drop("unexpected kind", update, current_round=round_)
                elif update.site not in expected or update.site in answers:
                    self._drop("not selected or repeated", update)
                else:
                    answers[update.site] = Answer(update, tensors, len(value), time.time())
        return answers

    def close(self) -> None:
        """Close the consumer."""
        self.consumer.close()
