"""Rollout changes made through the API, and refusals, told to the rest of the platform:
an API change is applied here first, then announced on `models.updates` (so every replica
follows; the announcement carries this instance's origin id so it does not re-apply its own)
and, for promote/rollback, written to the registry's live index. Refusals and operator
changes are recorded as Decisions."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics

from services.serving.fleet import Action, Fleet
from services.serving.model import LoadedModel
from services.serving.router import Rollout
from shared.announcements import next_sequence, sign_announcement
from shared.events import CONTENT_TYPE_JSON, Decision, Header, HeaderList, encode
from shared.principals import Principal
from shared.topics import Topics
from shared.tracing import get_tracer, publish_span

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from services.serving.config import ServingSettings

log = logging.getLogger(__name__)
_tracer = get_tracer(__name__)
_refusals = metrics.get_meter("lepton.serving").create_counter(
    "lepton.serving.models.refused", description="Model versions refused (verification/warm-up)"
)
ACTOR = "serving"
ORIGIN_HEADER = "lepton.serving.origin"
_DECISION_KIND = {Action.PROMOTE: "model_promoted", Action.ROLLBACK: "model_rolled_back"}


class RolloutControl:
    """Applies API rollout changes and reports refusals."""

    def __init__(self, settings: ServingSettings, fleet: Fleet, *, announce: bool = True) -> None:
        self.settings = settings
        self.fleet = fleet
        self.announce = announce
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self.origin = uuid.uuid4().hex

    def producer(self) -> Producer:
        """A lazily created producer for announcements and decisions."""
        with self._lock:
            if self._producer is None:
                from shared.kafka import make_producer

                overrides: dict[str, Any] = {"linger.ms": 0}
                self._producer = make_producer(self.settings, **overrides)
            return self._producer

    def change(self, action: Action, model: str, version: int | None,
               share: float | None) -> Rollout:
        """Apply a rollout change requested through the API, then announce and record it."""
        host = self.fleet.hosts.get(model)
        before = host.rollout if host is not None else None
        rollout = self.fleet.apply(action, model, version, share)
        target = _target(action, before, rollout, version)
        if self.announce and target is not None:
            try:
                self._announce(action, target, rollout)
            except Exception as error:
                log.warning("rollout of %s applied here but not announced: %s", model, error)
        return rollout

    def _announce(self, action: Action, target: LoadedModel, rollout: Rollout) -> None:
        wire_action = Action.RETIRE if action is Action.CLEAR else action
        update: dict[str, Any] = {"action": wire_action.value,
                                  "share": rollout.share if action is Action.CANARY else None}
        registry = self.fleet.loader.registry
        announcement = sign_announcement(
            Principal.load(self.settings, "serving"),
            target.card.announcement().model_copy(update=update),
            next_sequence(registry.redis, self.settings, target.name))
        topic = Topics(self.settings.topic_prefix).models
        headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON),
                               (ORIGIN_HEADER, self.origin.encode())]
        producer = self.producer()
        with publish_span(_tracer, topic, headers, key=target.name,
                          attributes={"lepton.model.version": target.version,
                                      "lepton.rollout.action": wire_action.value}):
            producer.produce(topic, key=target.name.encode(), value=encode(announcement),
                             headers=headers)
        if producer.flush(15) > 0:
            raise TimeoutError("announcement not delivered")
        if action in (Action.PROMOTE, Action.ROLLBACK):
            self.fleet.loader.registry.set_live(target.name, target.version)
            self._decide(_DECISION_KIND[action], target.card.dataset,
                         {"model": target.name, "version": target.version, "via": "serving-api"})

    def refused(self, model: str, version: int, action: str, reason: str,
                dataset: str | None = None) -> None:
        """Log a refused model version and record a `model_refused` decision."""
        log.warning("refused %s v%d (%s): %s; live version keeps serving", model, version,
                    action, reason)
        _refusals.add(1, {"model": model, "version": version})
        if self.announce:
            self._decide("model_refused", dataset, {"model": model, "version": version,
                                                    "action": action, "reason": reason})

    def _decide(self, kind: str, dataset: str | None, detail: dict[str, Any]) -> None:
        from shared.decisions import publish_decision

        try:
            publish_decision(self.producer(), self.settings,
                             Decision(kind=kind, actor=ACTOR, dataset=dataset, detail=detail),
                             signer=Principal.load(self.settings, "serving"))
        except Exception as error:
            log.warning("decision %s not published: %s", kind, error)

    def close(self) -> None:
        """Flush and drop the producer."""
        with self._lock:
            if self._producer is not None:
                self._producer.flush(5)
                self._producer = None


def _target(action: Action, before: Rollout | None, after: Rollout,
            version: int | None) -> LoadedModel | None:
    """The model version an API change is about (what the announcement names)."""
    if action in (Action.PROMOTE, Action.ROLLBACK):
        return after.live
    if action in (Action.CANARY, Action.SHADOW):
        return after.candidate
    if before is None or before.candidate is None:
        return None
    if action is Action.CLEAR or before.candidate.version == version:
        return before.candidate
    return None
