"""Consent and right-to-be-forgotten policy, read from (and for consent written to) Redis.

`rkey(s, "policy", "forgotten")` is the SET of forgotten subjects (written by `lepton forget`);
`rkey(s, "policy", "consent", dataset)` is the SET of subjects who withdrew consent for that
dataset's purpose (consent is given by default; written by `lepton consent`). Both hold subject
pseudonyms (`shared.pseudonym`), never raw subject ids.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import redis

from services.governance.records import Reason
from shared.config import LeptonSettings
from shared.state import rkey


class Policy:
    """Decides whether a subject's event may be released for a dataset."""

    def __init__(self, client: redis.Redis[bytes], settings: LeptonSettings) -> None:
        self._redis = client
        self._settings = settings

    def forgotten_key(self) -> str:
        """The SET of forgotten subject ids."""
        return rkey(self._settings, "policy", "forgotten")

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
        pipe.smismember(self.forgotten_key(), subjects)  # type: ignore[no-untyped-call]
        order = sorted(by_dataset)
        for dataset in order:
            pipe.smismember(  # type: ignore[no-untyped-call]
                self.consent_key(dataset), sorted(by_dataset[dataset]))
        replies = pipe.execute()
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
