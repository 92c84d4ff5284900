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

from collections import Counter
from typing import Any

from confluent_kafka import Message
from opentelemetry.trace import Tracer

from services.governance.admission import ALLOWED, Refused, admit
from services.governance.batch import Item, undecided_by_dataset
from services.governance.bound import ContributionBound
from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger
from services.governance.policy import Policy
from services.governance.privacy import DatasetPrivacy, PrivacyConfigError
from services.governance.records import Kind, Reason
from services.governance.releases import ReleaseLedger
from services.governance.sealing import decision_item, event_fields, outputs_for
from services.governance.spending import bound_releases, charge_events
from services.governance.store import AuditStore
from services.governance.telemetry import GovernanceMetrics
from shared.allowlist import AllowList
from shared.datasets import UnknownDataset, load_spec
from shared.dlq import DeadLetterSealer
from shared.events import EnvelopeError, decode_envelope, loads_json
from shared.fast_envelope import from_envelope, lean_envelope
from shared.governed_mac import GovernedMac
from shared.principals import public_keys_dir
from shared.pseudonym import is_pseudonym, load_pseudonymizer
from shared.stage import Output
from shared.topics import Topics
from shared.tracing import get_tracer

ACTOR = "governance"


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

    def process(self, messages: list[Message]) -> list[Output]:
        """Decide, charge, release and seal a batch; durable on disk when this returns."""
        items = [self._decode(m) for m in messages]
        events = [i for i in items if i.msg.topic() == self.clean_topic]
        self._identify(events)
        self._apply_policy(events)
        bound_releases(events, self.dataset, self.releases, self.bound, self.metrics)
        if self.settings.governance_dp_enabled:  # with DP off nothing is charged
            charge_events(events, self.dataset, self.ledger, self.metrics)
        self._release(events)
        for item in items:
            if item.msg.topic() != self.clean_topic:
                decision_item(item, self.store, self.dataset, self.metrics, self.releases)
        self._seal(items)
        self.policy.apply(item.extra for item in items
                          if item.decision is not None and item.sealed is not None)
        self.store.sync()
        group = self.settings.group_id()
        outputs: list[Output] = []
        for item in items:
            outputs.extend(outputs_for(item, self.topics, self.tracer, group, self.sealer,
                                       self.mac))
        return outputs

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

    def _release(self, events: list[Item]) -> None:
        for name, group in undecided_by_dataset(events).items():
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
