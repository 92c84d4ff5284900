"""What governance writes for each consumed record: the audit fields of an event decision,
the sealing of `audit.requests` decisions (charging `dp_sgd_charge` to the dataset ledger), and
the Kafka records to produce (governed envelope, audit record, dead letter), each under a
process span that continues the record's trace."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.governance.ledger import Budget, Charge, Ledger
from services.governance.privacy import DatasetPrivacy
from services.governance.records import Kind, Reason
from services.governance.store import AuditStore
from services.governance.telemetry import GovernanceMetrics
from shared.events import (
    CONTENT_TYPE_JSON,
    AuditRef,
    Header,
    HeaderList,
    dlq_headers,
    encode,
)
from shared.topics import Topics
from shared.tracing import inject_headers, process_span

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from services.governance.processor import Item

AUDIT_TYPE_HEADER = "lepton.audit.type"
UNBOUNDED = Budget(subject=1e308, dataset=1e308)
DP_OFF_NOTE = "differential privacy disabled: features released un-noised, ε=0 charged"

DatasetLookup = Callable[[str], "DatasetPrivacy | str"]


@dataclass(slots=True)
class Output:
    """A record to produce inside the batch's transaction."""

    topic: str
    key: bytes | None
    value: bytes
    headers: HeaderList
    partition: int | None = None


def event_fields(item: Item, dataset: DatasetLookup, dp_enabled: bool,
                 actor: str) -> dict[str, Any]:
    """The audit-record fields of a decision about an event."""
    fields: dict[str, Any] = {"identity": item.identity, "kind": item.kind, "actor": actor,
                              "reason": item.reason, "source": item.source}
    env = item.envelope
    if env is not None:
        fields.update(event_id=env.event_id, subject_id=env.subject_id, dataset=env.dataset,
                      occurred_at=env.occurred_at.isoformat())
    if item.error:
        fields["detail"] = {"error": item.error}
    if item.kind == Kind.RELEASED and env is not None:
        privacy = dataset(env.dataset)
        assert isinstance(privacy, DatasetPrivacy)
        charge = item.charge
        fields.update(epsilon=charge.epsilon if charge else 0.0,
                      rho=charge.rho if charge else 0.0, delta=privacy.delta,
                      mechanism=privacy.mechanism, dp_enabled=dp_enabled)
        if not dp_enabled:
            fields["detail"] = {"note": DP_OFF_NOTE}
    return fields


def decision_item(item: Item, store: AuditStore, ledger: Ledger, dataset: DatasetLookup,
                  metrics: GovernanceMetrics) -> None:
    """Prepare a consumed `audit.requests` record for sealing (charging dp_sgd_charge)."""
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
        "occurred_at": decision.occurred_at.isoformat()}
    if decision.kind == Kind.DP_SGD_CHARGE:
        fields.update(_charge_dp_sgd(item, decision.dataset, decision.detail, ledger, dataset,
                                     metrics, replay=sealed is not None))
    item.reason = fields.get("reason")
    item.extra = fields


def _charge_dp_sgd(item: Item, name: str | None, detail: dict[str, Any], ledger: Ledger,
                   dataset: DatasetLookup, metrics: GovernanceMetrics,
                   replay: bool) -> dict[str, Any]:
    """Charge a trainer's DP-SGD ε to the dataset ledger (recorded even over budget: the
    privacy was already spent), idempotently by decision id."""
    name = name or detail.get("dataset")
    eps = detail.get("epsilon")
    if not name or isinstance(eps, bool) or not isinstance(eps, int | float):
        return {"reason": "invalid_charge"}
    privacy = dataset(name)
    budget = privacy.budget if isinstance(privacy, DatasetPrivacy) else UNBOUNDED
    [result] = ledger.charge(name, budget, [Charge(item.identity, None, float(eps))],
                             force=True)
    if not result.charged:
        return {"reason": Reason.BAD_EPSILON}
    if not result.replay:
        metrics.epsilon.add(result.epsilon, {"dataset": name})
    delta = detail.get("delta")
    return {"dataset": name, "epsilon": result.epsilon,
            "delta": float(delta) if isinstance(delta, int | float) else None,
            "mechanism": "dp-sgd",
            "reason": "dataset_budget_exceeded" if result.reason else None}


def outputs_for(item: Item, topics: Topics, tracer: Tracer, group: str) -> list[Output]:
    """The records to produce for one consumed record, under its process span."""
    msg = item.msg
    attrs: dict[str, Any] = {"lepton.governance.decision": item.kind or "",
                             "lepton.governance.reason": item.reason or ""}
    if item.envelope is not None:
        attrs["lepton.event_id"] = item.envelope.event_id
        attrs["lepton.dataset"] = item.envelope.dataset
    if item.charge is not None:
        attrs["lepton.privacy.epsilon"] = item.charge.epsilon
    if item.sealed is not None:
        attrs["lepton.audit.partition"] = item.sealed.partition
        attrs["lepton.audit.leaf_index"] = item.sealed.leaf_index
    out: list[Output] = []
    key = msg.key()
    text_key = key.decode("utf-8", "replace") if key else None
    raw = msg.headers()
    consumed = list(raw.items()) if isinstance(raw, dict) else raw
    with process_span(tracer, msg.topic() or "", consumed, partition=msg.partition(),
                      offset=msg.offset(), group=group, key=text_key,
                      attributes=attrs):
        if item.kind == Kind.RELEASED and item.envelope is not None and item.sealed:
            out.append(_governed(item, topics))
        if item.sealed is not None and item.publish:
            headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON),
                                   (AUDIT_TYPE_HEADER, b"record")]
            out.append(Output(topics.audit_log, item.identity.encode(), item.line,
                              inject_headers(headers), item.sealed.partition))
        if item.kind in (Kind.REJECTED, Kind.DECISION_REJECTED):
            headers = dlq_headers(
                consumed, reason=item.reason or "rejected", detail=item.error or "",
                stage="governance", exception="", topic=msg.topic() or "",
                partition=msg.partition() or 0, offset=msg.offset() or 0)
            out.append(Output(topics.rejected, key, msg.value() or b"", inject_headers(headers)))
    return out


def _governed(item: Item, topics: Topics) -> Output:
    env = item.envelope
    assert env is not None
    assert item.sealed is not None
    governed = env.model_copy(update={
        "payload": item.payload,
        "changes": (*env.changes, *item.changes),
        "privacy": item.stamp,
        "audit": AuditRef(partition=item.sealed.partition, leaf_index=item.sealed.leaf_index),
    })
    headers: HeaderList = [(Header.CONTENT_TYPE, CONTENT_TYPE_JSON)]
    return Output(topics.governed, env.subject_id.encode(), encode(governed),
                  inject_headers(headers))
