"""Protect the PII fields of a batch's clean payloads per the spec, one field column at a time:
encrypt (AES-256-GCM under the subject's data key), tokenize (keyed hash under the subject's
token key, derived from its data key, so forgetting destroys the tokens too) or drop. For a
forgotten subject every PII field is dropped and no data key is ever minted. Each action is
recorded as a Change (never with the value).

Ciphertexts and tokens are `DataKey.encrypt` / `DataKey.tokenize`'s (services/ingest/ciphers.py),
made in one pass per column: the batch's nonces come from one `os.urandom` call and each data
key's AESGCM object is reused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.ingest.ciphers import NONCE_BYTES, DataKey
from services.ingest.columns import change
from services.ingest.rejection import Reason, Rejection, Stage, internal
from shared.datasets import DatasetSpec, FieldSpec, PiiAction
from shared.events import Change, Scalar


@dataclass(slots=True)
class Protectee:
    """One clean event to protect: its payload and Changes are updated in place."""

    event_id: str
    payload: dict[str, Scalar]
    changes: list[Change]
    key: DataKey | None
    forgotten: bool
    rejection: Rejection | None = field(default=None)


class Protector:
    """Applies the specs' PII actions to batches."""

    def __init__(self) -> None:
        self._pii: dict[str, list[FieldSpec]] = {}
        self._needs_key: dict[str, bool] = {}

    def pii_fields(self, spec: DatasetSpec) -> list[FieldSpec]:
        """The spec's PII fields (cached per dataset)."""
        fields = self._pii.get(spec.name)
        if fields is None:
            fields = self._pii[spec.name] = spec.pii_fields
        return fields

    def needs_key(self, spec: DatasetSpec) -> bool:
        """True when the dataset has fields to encrypt or tokenize (both need the data key)."""
        found = self._needs_key.get(spec.name)
        if found is None:
            found = self._needs_key[spec.name] = any(
                f.pii is not PiiAction.DROP for f in self.pii_fields(spec))
        return found

    def protect(self, spec: DatasetSpec, events: Sequence[Protectee]) -> None:
        """Replace PII values in every event's payload; a failure rejects that event only
        (`key_unavailable` when its data key cannot be unwrapped)."""
        for spec_field in self.pii_fields(spec):
            name = spec_field.name
            todo = [e for e in events if e.rejection is None and e.payload.get(name) is not None]
            if not todo:
                continue
            if spec_field.pii is PiiAction.DROP:
                self._drop(todo, name, change(name, "dropped", "pii: drop"))
                continue
            forgotten = [e for e in todo if e.forgotten]
            self._drop(forgotten, name, change(name, "dropped", "subject forgotten"))
            live = [e for e in todo if not e.forgotten]
            for event in live:
                if event.key is None:
                    event.rejection = Rejection(
                        Reason.KEY_UNAVAILABLE,
                        f"{name}: the subject's data key cannot be unwrapped",
                        stage=Stage.PROTECT, field=name)
            live = [e for e in live if e.key is not None]
            if spec_field.pii is PiiAction.TOKENIZE:
                self._tokenize(live, name)
            else:
                self._encrypt(live, name)

    @staticmethod
    def _drop(events: list[Protectee], name: str, made: Change) -> None:
        for event in events:
            del event.payload[name]
            event.changes.append(made)

    def _tokenize(self, events: list[Protectee], name: str) -> None:
        made = change(name, "tokenized", "hmac-sha256, per-subject key")
        for event in events:
            key = event.key
            assert key is not None
            try:
                token = key.tokenize(name, str(event.payload[name]))
            except Exception as error:  # one odd value must never fail the batch
                event.rejection = internal(error, Stage.PROTECT)
                continue
            event.payload[name] = token
            event.changes.append(made)

    def _encrypt(self, events: list[Protectee], name: str) -> None:
        made = change(name, "encrypted", "aes-256-gcm")
        nonces = os.urandom(NONCE_BYTES * len(events))
        for at, event in enumerate(events):
            key = event.key
            assert key is not None
            try:
                sealed = key.encrypt(event.event_id, name, str(event.payload[name]),
                                     nonces[at * NONCE_BYTES:(at + 1) * NONCE_BYTES])
            except Exception as error:  # one odd value must never fail the batch
                event.rejection = internal(error, Stage.PROTECT)
                continue
            event.payload[name] = sealed
            event.changes.append(made)
