"""Consent and right-to-be-forgotten policy, read from (and for consent written to) Redis.

`shared.state.forgotten_key` is the SET of forgotten subjects (written by `lepton forget`);
`rkey(s, "policy", "consent", dataset)` is the SET of subjects who withdrew consent for that
dataset's purpose (consent is given by default; written by `lepton consent`). Both hold subject
pseudonyms (`shared.pseudonym`), never raw subject ids.

Redis is not their only home: every `subject_forgotten` and `consent_changed` decision is sealed
in the audit store, and governance applies each one it seals to Redis too. When Redis lost the
sets (wiped, restarted empty: the `policy_ready_key` marker is gone) they are rebuilt from the audit
store before the next event is decided, so a forgotten subject stays forgotten and a withdrawal
holds (`lepton state rebuild` does the same offline).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import redis

from services.governance.records import Reason
from services.governance.segments import SegmentLog
from services.governance.store import SEGMENTS, partition_dir, partitions_on_disk
from shared.config import LeptonSettings
from shared.state import forgotten_key, policy_ready_key, rkey

FORGOTTEN = "subject_forgotten"
CONSENT = "consent_changed"


class Policy:
    """Decides whether a subject's event may be released for a dataset."""

    def __init__(self, client: redis.Redis[bytes], settings: LeptonSettings,
                 audit_dir: Path | None = None) -> None:
        self._redis = client
        self._settings = settings
        self._audit_dir = audit_dir

    def ready_key(self) -> str:
        """Present while Redis holds the policy sets (set by `rebuild`)."""
        return policy_ready_key(self._settings)

    @property
    def redis(self) -> redis.Redis[bytes]:
        """The Redis client policy state is read from."""
        return self._redis

    def forgotten_key(self) -> str:
        """The SET of forgotten subject ids."""
        return forgotten_key(self._settings)

    def consent_key(self, dataset: str) -> str:
        """The SET of subjects who withdrew consent for `dataset`."""
        return rkey(self._settings, "policy", "consent", dataset)

    def blocked(self, items: Sequence[tuple[str, str]]) -> list[str | None]:
        """For each (dataset, subject): the reason to withhold, or None (one round trip)."""
        if not items:
            return []
        subjects = sorted({subject for _, subject in items})
        by_dataset: dict[str, set[str]] = defaultdict(set)
        for dataset, subject in items:
            by_dataset[dataset].add(subject)
        pipe = self._redis.pipeline(transaction=False)
        pipe.exists(self.ready_key())
        pipe.smismember(self.forgotten_key(), subjects)  # type: ignore[no-untyped-call]
        order = sorted(by_dataset)
        for dataset in order:
            pipe.smismember(  # type: ignore[no-untyped-call]
                self.consent_key(dataset), sorted(by_dataset[dataset]))
        ready, *replies = pipe.execute()
        if not ready and self._audit_dir is not None:
            self.rebuild()
            return self.blocked(items)
        forgotten = {s for s, hit in zip(subjects, replies[0], strict=True) if hit}
        withdrawn = {
            (dataset, s)
            for dataset, reply in zip(order, replies[1:], strict=True)
            for s, hit in zip(sorted(by_dataset[dataset]), reply, strict=True) if hit
        }
        out: list[str | None] = []
        for dataset, subject in items:
            if subject in forgotten:
                out.append(Reason.FORGOTTEN)
            elif (dataset, subject) in withdrawn:
                out.append(Reason.NO_CONSENT)
            else:
                out.append(None)
        return out

    def set_consent(self, subject: str, dataset: str, *, given: bool) -> bool:
        """Give or withdraw consent; True when that changed anything."""
        key = self.consent_key(dataset)
        changed = self._redis.srem(key, subject) if given else self._redis.sadd(key, subject)
        return bool(changed)

    def has_consent(self, subject: str, dataset: str) -> bool:
        """True unless the subject withdrew consent for `dataset`."""
        return not self._redis.sismember(self.consent_key(dataset), subject)

    def apply(self, records: Iterable[Mapping[str, Any]]) -> int:
        """Apply sealed `subject_forgotten`/`consent_changed` records to Redis, in order."""
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for record in records:
            subject, kind = record.get("subject_id"), record.get("kind")
            if not isinstance(subject, str):
                continue
            if kind == FORGOTTEN:
                pipe.sadd(self.forgotten_key(), subject)
            elif kind == CONSENT and isinstance(record.get("dataset"), str):
                detail = record.get("detail") or {}
                key = self.consent_key(str(record["dataset"]))
                if detail.get("consent") == "withdrawn":
                    pipe.sadd(key, subject)
                elif detail.get("consent") == "given":
                    pipe.srem(key, subject)
                else:
                    continue
            else:
                continue
            count += 1
        if count:
            pipe.execute()
        return count

    def rebuild(self) -> int:
        """Re-apply every policy decision in the audit store to Redis and mark it ready."""
        if self._audit_dir is None:
            raise ValueError("no audit store to rebuild the policy sets from")
        count = self.apply(policy_records(self._audit_dir))
        self._redis.set(self.ready_key(), b"1")
        return count


def policy_records(audit_dir: Path) -> Iterator[dict[str, Any]]:
    """The sealed forget and consent decisions, per partition in leaf order."""
    needles = (f'"kind":"{FORGOTTEN}"'.encode(), f'"kind":"{CONSENT}"'.encode())
    for partition in partitions_on_disk(audit_dir):
        for line in SegmentLog(partition_dir(audit_dir, partition) / SEGMENTS).scan():
            if needles[0] in line or needles[1] in line:
                yield orjson.loads(line)
