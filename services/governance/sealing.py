"""What governance writes for each consumed record: the audit fields of an event decision,
the sealing of `audit.requests` decisions (a `release_charge` is charged to the release ledger
and its verdict recorded for the trainer), and the Kafka records to produce (governed
envelope, audit record, dead letter), each under a process span that continues the record's
trace."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import orjson

from services.governance.admission import ReleaseChargeDetail
from services.governance.privacy import DatasetPrivacy
from services.governance.records import Kind
from services.governance.release_charge import charge_release
from services.governance.releases import ReleaseLedger
from services.governance.store import AuditStore
from services.governance.telemetry import GovernanceMetrics
from shared.dlq import SEALED_HEADER, DeadLetterSealer
from shared.events import (
    CONTENT_TYPE_JSON,
    Change,
    Header,
    PrivacyStamp,
    dlq_headers,
)
from shared.governed_mac import MAC_HEADER, GovernedMac
from shared.record_trace import record_trace
from shared.stage import Output
from shared.topics import Topics

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from services.governance.batch import Item

AUDIT_TYPE_HEADER = "lepton.audit.type"
DP_OFF_NOTE = "differential privacy disabled: features released un-noised, ε=0 charged"
MODEL_MODE_NOTE = ("released un-noised inside the boundary; models trained on it are DP-SGD "
                   "releases charged per subject")

DatasetLookup = Callable[[str], "DatasetPrivacy | str"]


def event_fields(item: Item, dataset: DatasetLookup, dp_enabled: bool,
                 actor: str) -> dict[str, Any]:
    """The audit-record fields of a decision about an event."""
    fields: dict[str, Any] = {"identity": item.identity, "kind": item.kind, "actor": actor,
                              "reason": item.reason, "source": item.source}
    env = item.envelope
    if env is not None:
        fields.update(event_id=env.event_id, subject_id=env.subject_id, dataset=env.dataset,
                      occurred_at=env.time_iso())
    if item.error:
        fields["detail"] = {"error": item.error}
    if item.kind == Kind.RELEASED and env is not None:
        privacy = dataset(env.dataset)
        assert isinstance(privacy, DatasetPrivacy)
        if not privacy.local:
            fields.update(mechanism="none", dp_enabled=True,
                          detail={"privacy_mode": "model", "note": MODEL_MODE_NOTE})
            return fields
        charge = item.charge
        fields.update(epsilon=charge.epsilon if charge else 0.0,
                      rho=charge.rho if charge else 0.0, delta=privacy.delta,
                      mechanism=privacy.mechanism, dp_enabled=dp_enabled)
        if not dp_enabled:
            fields["detail"] = {"note": DP_OFF_NOTE}
    return fields


def decision_item(item: Item, store: AuditStore, dataset: DatasetLookup,
                  metrics: GovernanceMetrics, releases: ReleaseLedger) -> None:
    """Prepare a consumed `audit.requests` record for sealing (charging a release_charge)."""
    base = {"actor": "governance", "source": item.source}
    decision = item.decision
    if decision is None:
        item.extra = {**base, "identity": item.identity, "kind": item.kind,
                      "reason": item.reason, "detail": {"error": item.error}}
        return
    item.identity = f"decision:{decision.decision_id}"
    sealed = store.lookup(item.identity)
    if sealed is not None and sealed.source != item.source:
        item.kind, item.publish = "duplicate_decision", False
        return
    item.kind = decision.kind
    fields: dict[str, Any] = {
        **base, "identity": item.identity, "kind": decision.kind, "actor": decision.actor,
        "decision_id": decision.decision_id, "subject_id": decision.subject_id,
        "event_id": decision.event_id, "dataset": decision.dataset, "detail": decision.detail,
        "occurred_at": decision.occurred_at.isoformat(),
        "principal": item.principal.name if item.principal else None,
        "key_id": decision.key_id}
    if isinstance(item.detail, ReleaseChargeDetail) and decision.dataset is not None:
        fields.update(charge_release(decision.dataset, item.detail, releases, dataset,
                                     metrics))
    item.reason = fields.get("reason")
    item.extra = fields


def outputs_for(item: Item, topics: Topics, tracer: Tracer, group: str,
                sealer: DeadLetterSealer, mac: GovernedMac) -> list[Output]:
    """The records to produce for one consumed record, carrying its process span's context
    (governed records stamped with their MAC, dead letters sealed to the DLQ public key); the
    span is built only when it is recorded (shared.record_trace)."""
    msg = item.msg
    raw = msg.headers()
    consumed = list(raw.items()) if isinstance(raw, dict) else (raw or [])
    span, trace = record_trace(tracer, msg.topic() or "", consumed, partition=msg.partition(),
                               offset=msg.offset(), group=group)
    if span is not None:
        span.set_attribute("lepton.governance.decision", item.kind or "")
        if item.reason:
            span.set_attribute("lepton.governance.reason", item.reason)
        if item.envelope is not None:
            span.set_attribute("lepton.event_id", item.envelope.event_id)
        if item.sealed is not None:
            span.set_attribute("lepton.audit.leaf_index", item.sealed.leaf_index)
    out: list[Output] = []
    try:
        if item.kind == Kind.RELEASED and item.envelope is not None and item.sealed:
            value = governed_json(item)
            out.append(Output(topics.governed, item.envelope.subject_id.encode(), value,
                              [_JSON, (MAC_HEADER, mac.tag(value)), *trace], origin=msg))
        if item.sealed is not None and item.publish:
            out.append(Output(topics.audit_log, item.identity.encode(), item.line,
                              [_JSON, _RECORD, *trace], item.sealed.partition, msg))
        if item.kind in (Kind.REJECTED, Kind.DECISION_REJECTED):
            reason = (Kind.DECISION_REJECTED if item.kind == Kind.DECISION_REJECTED
                      else item.reason or "rejected")
            headers = dlq_headers(
                consumed, reason=reason, detail=item.error or "",
                stage="governance", exception="", topic=msg.topic() or "",
                partition=msg.partition() or 0, offset=msg.offset() or 0, service="governance")
            value, how = sealer.seal(msg.value() or b"")
            headers.append((SEALED_HEADER, how.value.encode()))
            subject = item.envelope.subject_id.encode() if item.envelope else None
            out.append(Output(topics.rejected, subject, value, [*headers, *trace], origin=msg))
    finally:
        if span is not None:
            span.end()
    return out


_JSON = (Header.CONTENT_TYPE, CONTENT_TYPE_JSON)
_RECORD = (AUDIT_TYPE_HEADER, b"record")


@lru_cache(maxsize=4096)
def _as_dict(model: Change | PrivacyStamp) -> dict[str, Any]:
    return model.model_dump(mode="json")


def governed_json(item: Item) -> bytes:
    """The governed envelope: the validated input JSON (as parsed when decoded; used once)
    with the released payload, the changes made, the privacy stamp and the audit reference."""
    assert item.sealed is not None
    obj = item.obj if item.obj is not None else orjson.loads(item.msg.value() or b"{}")
    if item.envelope is not None:
        obj["subject_id"] = item.envelope.subject_id
    obj["payload"] = item.payload
    obj["changes"] = [*obj.get("changes", ()), *(_as_dict(c) for c in item.changes)]
    obj["privacy"] = _as_dict(item.stamp) if item.stamp is not None else None
    obj["audit"] = {"partition": item.sealed.partition, "leaf_index": item.sealed.leaf_index}
    return orjson.dumps(obj)
