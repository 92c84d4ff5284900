"""One governance batch, from consumed records to the records to produce.

Consumes `events.clean` envelopes and `audit.requests` decisions; for events: replay/duplicate
check → consent/forget policy → in `model` privacy mode the subject/dataset budget check and the
per-release contribution bound, in `local` mode the per-event ledger charge → release (noised
only in local mode) → audit append; decisions are sealed into the audit log (a
`release_charge` is charged to the release ledger first, see sealing.py). Everything is made
durable on disk before the caller commits. Produces governed envelopes (with privacy stamp and
audit reference), audit records, and dead letters for input that cannot be governed.

A replay after a crash is recognised by the sealed identity and its source offset: the sealed
decision wins and its leaf is reused; the same event id from a different offset is a
duplicate and is withheld, so each event affects the ledger and the audit log exactly once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message
from opentelemetry.trace import Tracer
from pydantic import BaseModel

from services.governance.admission import ALLOWED, Refused, admit
from services.governance.bound import ContributionBound
from services.governance.config import GovernanceSettings
from services.governance.ledger import Budget, Charge, ChargeResult, Ledger, effective_epsilon
from services.governance.policy import Policy
from services.governance.privacy import DatasetPrivacy, PrivacyConfigError
from services.governance.records import Kind, Reason
from services.governance.releases import ReleaseLedger
from services.governance.sealing import decision_item, event_fields, outputs_for
from services.governance.store import AuditStore, Sealed
from services.governance.telemetry import GovernanceMetrics
from shared.allowlist import Allowed, AllowList
from shared.datasets import UnknownDataset, load_spec
from shared.dlq import DeadLetterSealer
from shared.events import (
    Change,
    Decision,
    EnvelopeError,
    PrivacyStamp,
    Scalar,
    decode_envelope,
    loads_json,
)
from shared.fast_envelope import LeanEnvelope, from_envelope, lean_envelope
from shared.governed_mac import GovernedMac
from shared.principals import public_keys_dir
from shared.pseudonym import is_pseudonym, load_pseudonymizer
from shared.stage import Output
from shared.topics import Topics
from shared.tracing import get_tracer

ACTOR = "governance"


@dataclass(slots=True)
class Item:
    """One consumed record on its way through the batch."""

    msg: Message
    source: str
    envelope: LeanEnvelope | None = None
    obj: dict[str, Any] | None = None  # the parsed input JSON (becomes the governed event's)
    decision: Decision | None = None
    detail: BaseModel | None = None
    principal: Allowed | None = None
    error: str | None = None
    identity: str = ""
    kind: str | None = None
    reason: str | None = None
    replay: bool = False
    charge: ChargeResult | None = None
    payload: dict[str, Scalar] | None = None
    changes: list[Change] = field(default_factory=list)
    stamp: PrivacyStamp | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    sealed: Sealed | None = None
    line: bytes = b""
    publish: bool = True


@dataclass
class BatchResult:
    """What to produce and commit for a batch."""

    outputs: list[Output]
    offsets: dict[tuple[str, int], int]
    counts: Counter[str]


class Processor:
    """Governs batches of consumed records."""

    def __init__(self, settings: GovernanceSettings, store: AuditStore, ledger: Ledger,
                 policy: Policy, metrics: GovernanceMetrics, audit_partitions: int,
                 tracer: Tracer | None = None,
                 releases: ReleaseLedger | None = None) -> None:
        self.settings = settings
        self.releases = releases or ReleaseLedger(policy.redis, settings)
        self.bound = ContributionBound(policy.redis, settings)
        self.topics = Topics(settings.topic_prefix)
        self.clean_topic = self.topics.clean
        self.store = store
        self.ledger = ledger
        self.policy = policy
        self.metrics = metrics
        self.audit_partitions = audit_partitions
        self.tracer = tracer or get_tracer("lepton.governance")
        self.pseudonyms = load_pseudonymizer(settings)
        self.sealer = DeadLetterSealer.load(settings)
        self._datasets: dict[str, DatasetPrivacy | str] = {}
        self.allow = AllowList(public_keys_dir(settings), ALLOWED)
        self.mac = GovernedMac.load(settings)

    def dataset(self, name: str) -> DatasetPrivacy | str:
        """The release settings of a dataset, or why it cannot be governed."""
        found = self._datasets.get(name)
        if found is None:
            try:
                spec = load_spec(name, self.settings.governance_specs_dir)
                found = DatasetPrivacy(spec, enabled=self.settings.governance_dp_enabled)
            except UnknownDataset:
                found = Reason.UNKNOWN_DATASET
            except (PrivacyConfigError, ValueError):
                found = "invalid_privacy_settings"
            self._datasets[name] = found
        return found

    def process(self, messages: list[Message]) -> BatchResult:
        """Decide, charge, release and seal a batch; durable on disk when this returns."""
        items = [self._decode(m) for m in messages]
        events = [i for i in items if i.msg.topic() == self.clean_topic]
        self._identify(events)
        self._apply_policy(events)
        self._bound(events)
        self._charge(events)
        self._release(events)
        for item in items:
            if item.msg.topic() != self.clean_topic:
                decision_item(item, self.store, self.ledger, self.dataset, self.metrics,
                              self.releases)
        self._seal(items)
        self.policy.apply(item.extra for item in items
                          if item.decision is not None and item.sealed is not None)
        self.store.sync()
        offsets: dict[tuple[str, int], int] = {}
        counts: Counter[str] = Counter()
        outputs: list[Output] = []
        for item in items:
            key = (item.msg.topic() or "", item.msg.partition() or 0)
            offsets[key] = max(offsets.get(key, 0), (item.msg.offset() or 0) + 1)
            counts[item.kind or "skipped"] += 1
            outputs.extend(outputs_for(item, self.topics, self.tracer, self.settings.group_id(),
                                       self.sealer, self.mac))
        return BatchResult(outputs, offsets, counts)

    def _decode(self, msg: Message) -> Item:
        item = Item(msg, f"{msg.topic()}/{msg.partition()}/{msg.offset()}")
        value = msg.value() or b""
        if msg.topic() != self.clean_topic:
            admitted = admit(value, self._governed, self.settings.governance_max_charge_epsilon,
                             self.allow)
            if isinstance(admitted, Refused):
                item.error = admitted.text()
                item.identity = f"input:{item.source}"
                item.kind, item.reason = Kind.DECISION_REJECTED, admitted.code
            else:
                decision = admitted.decision
                if decision.subject_id and not is_pseudonym(decision.subject_id):
                    # an operator's raw id is pseudonymised here, never sealed in clear
                    decision = decision.model_copy(
                        update={"subject_id": self.pseudonyms.of(decision.subject_id)})
                item.decision, item.detail = decision, admitted.detail
                item.principal = admitted.principal
            return item
        try:
            # subjects are pseudonyms after ingest; a raw id (a producer writing events.clean
            # directly) is pseudonymised here
            obj = loads_json(value)
            envelope = lean_envelope(obj) or from_envelope(decode_envelope(value))
            if not is_pseudonym(envelope.subject_id):
                envelope.subject_id = self.pseudonyms.of(envelope.subject_id)
            item.envelope, item.obj = envelope, obj
        except EnvelopeError as error:
            item.error = f"{error.kind}: {error.field}"[:200]
            item.identity = f"input:{item.source}"
            item.kind, item.reason = Kind.REJECTED, Reason.BAD_ENVELOPE
        return item

    def _governed(self, name: str) -> bool:
        return isinstance(self.dataset(name), DatasetPrivacy)

    def _identify(self, events: list[Item]) -> None:
        in_batch: set[str] = set()
        for item in events:
            if item.envelope is None:
                continue
            identity = f"event:{item.envelope.event_id}"
            sealed = self.store.lookup(identity)
            if identity in in_batch or (sealed is not None and sealed.source != item.source):
                item.identity = f"duplicate:{item.source}"
                item.kind, item.reason = Kind.WITHHELD, Reason.DUPLICATE
                continue
            in_batch.add(identity)
            item.identity = identity
            if sealed is not None:
                item.replay = True
                if sealed.kind != Kind.RELEASED:
                    item.kind, item.reason = sealed.kind, sealed.reason
                    continue
            privacy = self.dataset(item.envelope.dataset)
            if isinstance(privacy, str):
                item.kind, item.reason = Kind.REJECTED, privacy

    def _apply_policy(self, events: list[Item]) -> None:
        todo = [i for i in events if i.kind is None and not i.replay and i.envelope]
        pairs = [(i.envelope.dataset, i.envelope.subject_id) for i in todo if i.envelope]
        for item, reason in zip(todo, self.policy.blocked(pairs), strict=True):
            if reason is not None:
                item.kind, item.reason = Kind.WITHHELD, reason

    def _bound(self, events: list[Item]) -> None:
        """Model mode: withhold subjects (or a dataset) one more release would overspend,
        then events beyond the subject's per-release contribution bound."""
        for name, group in _undecided_by_dataset(events).items():
            privacy = self.dataset(name)
            assert isinstance(privacy, DatasetPrivacy)
            if privacy.local:
                continue
            spec = privacy.privacy_spec
            budget = privacy.budget
            subjects = [i.envelope.subject_id for i in group if i.envelope]
            dataset_over, over = self.releases.exhausted(
                name, subjects, budget.subject, budget.dataset, budget.delta)
            admitted: list[Item] = []
            for item in group:
                subject = item.envelope.subject_id if item.envelope else ""
                if dataset_over or subject in over:
                    item.kind = Kind.WITHHELD
                    item.reason = Reason.DATASET_BUDGET if dataset_over else \
                        Reason.SUBJECT_BUDGET
                    self.metrics.budget_exhausted.add(1, {
                        "dataset": name, "scope": "dataset" if dataset_over else "subject"})
                else:
                    admitted.append(item)
            verdicts = self.bound.admit(
                name, self.releases.epoch_key(name), spec.max_events_per_subject,
                [(i.envelope.event_id, i.envelope.subject_id) for i in admitted if i.envelope])
            for item, fits in zip(admitted, verdicts, strict=True):
                if not fits:
                    item.kind, item.reason = Kind.WITHHELD, Reason.CONTRIBUTION_BOUND

    def _charge(self, events: list[Item]) -> None:
        """Local mode: charge each event's ε to the per-event ledger before it is released."""
        if not self.settings.governance_dp_enabled:
            return
        for name, group in _undecided_by_dataset(events).items():
            privacy = self.dataset(name)
            assert isinstance(privacy, DatasetPrivacy)
            if not privacy.local:
                continue
            charges = [Charge(i.identity, i.envelope.subject_id if i.envelope else None,
                              privacy.epsilon, privacy.rho) for i in group]
            results = self.ledger.charge(name, privacy.budget, charges)
            fresh = 0.0
            for item, result in zip(group, results, strict=True):
                item.charge = result
                if result.status == "refused":
                    item.kind = Kind.WITHHELD
                    item.reason = (Reason.SUBJECT_BUDGET if result.reason == "subject"
                                   else Reason.DATASET_BUDGET)
                    self.metrics.budget_exhausted.add(1, {"dataset": name,
                                                          "scope": result.reason})
                elif result.status == "invalid":
                    item.kind, item.reason = Kind.WITHHELD, Reason.BAD_EPSILON
                elif not result.replay:
                    fresh += result.epsilon
            if fresh:
                self.metrics.epsilon.add(fresh, {"dataset": name})
            self._observe_budget(name, privacy.budget)

    def _observe_budget(self, name: str, budget: Budget) -> None:
        spend = self.ledger.spend(name)
        self.metrics.set_budget(
            name, effective_epsilon(spend.epsilon, spend.rho, budget.delta), budget.dataset)

    def _release(self, events: list[Item]) -> None:
        for name, group in _undecided_by_dataset(events).items():
            privacy = self.dataset(name)
            assert isinstance(privacy, DatasetPrivacy)
            released = privacy.release([i.envelope.payload for i in group if i.envelope])
            for item, (payload, changes) in zip(group, released, strict=True):
                item.kind, item.payload, item.changes = Kind.RELEASED, payload, changes
                item.stamp = privacy.stamp

    def _seal(self, items: list[Item]) -> None:
        """Append the batch's decisions to the audit store (one write per partition) and
        count them."""
        todo: list[tuple[Item, int, dict[str, Any]]] = []
        for item in items:
            if item.kind is None:
                continue
            if item.envelope is not None or item.msg.topic() == self.clean_topic:
                fields = event_fields(item, self.dataset, self.settings.governance_dp_enabled,
                                      ACTOR)
            else:
                fields = item.extra
            if fields:
                todo.append((item, (item.msg.partition() or 0) % self.audit_partitions, fields))
        sealed = self.store.append_many([(partition, fields) for _, partition, fields in todo])
        counts: Counter[tuple[str, str, str]] = Counter()
        for (item, _, _), (where, line, new) in zip(todo, sealed, strict=True):
            item.sealed, item.line = where, line
            if new:
                counts["append", "", ""] += 1
            elif where.source != item.source:
                # the same decision sent twice within one batch: sealed (and published) once
                item.publish = False
                continue
            counts["decision", item.kind or "", item.reason or ""] += 1
        for (what, kind, reason), count in counts.items():
            if what == "append":
                self.metrics.audit_appends.add(count)
                continue
            self.metrics.decisions.add(count, {"kind": kind, "reason": reason})
            if kind == Kind.WITHHELD:
                self.metrics.withheld.add(count, {"reason": reason})
            elif kind in (Kind.REJECTED, Kind.DECISION_REJECTED):
                self.metrics.rejected.add(count, {"reason": reason})


def _undecided_by_dataset(events: list[Item]) -> dict[str, list[Item]]:
    """Events not yet withheld or released, grouped by dataset (in arrival order)."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for item in events:
        if item.kind is None and item.envelope is not None:
            groups[item.envelope.dataset].append(item)
    return groups
