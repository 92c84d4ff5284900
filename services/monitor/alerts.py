"""Signed `drift_detected` and `quality_degraded` decisions for governance's audit log, at most
one per kind and model version per cooldown (a Redis `SET NX` with expiry, so replicas and
restarts agree), and the optional retrain request (shared/retrain.py)."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from services.monitor.config import MonitorSettings
from shared.events import CONTENT_TYPE_JSON, Decision, Header, encode
from shared.principals import Principal, sign_decision
from shared.retrain import request_retrain
from shared.stage import Output
from shared.state import rkey
from shared.topics import Topics

ACTOR = "monitor"


class Alerts:
    """Turns detections into signed decisions (stage outputs)."""

    def __init__(self, settings: MonitorSettings, client: redis.Redis[bytes]) -> None:
        self.settings = settings
        self.redis = client
        self.signer = Principal.load(settings, "monitor")
        self.topic = Topics(settings.topic_prefix).audit_requests

    def decide(self, kind: str, model: str, version: int, dataset: str,
               detail: dict[str, Any], reason: str) -> Output | None:
        """The signed decision for this detection, or None within the cooldown."""
        gate = rkey(self.settings, "monitor", "alerted", kind, model, str(version))
        if not self.redis.set(gate, b"1", nx=True, ex=self.settings.monitor_alert_cooldown_s):
            return None
        retrain = self.settings.monitor_retrain
        if retrain:
            request_retrain(self.redis, self.settings, model, f"{kind}: {reason}")
        decision = sign_decision(self.signer, Decision(
            decision_id=f"{model}-v{version}-{kind}-{uuid.uuid4().hex[:16]}", kind=kind,
            actor=ACTOR, dataset=dataset,
            detail={"model": model, "version": version, "retrain": retrain, **detail}))
        return Output(self.topic, kind.encode(), encode(decision),
                      [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)])
