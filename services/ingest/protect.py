"""Protect a clean payload's PII fields per the spec: encrypt (AES-256-GCM under the subject's
data key), tokenize (keyed hash under the subject's token key, derived from its data key, so
forgetting destroys the tokens too) or drop. For a forgotten subject every PII field is dropped and
no data key is ever minted. Each action is recorded as a Change (never with the value).
"""

from __future__ import annotations

from services.ingest.ciphers import DataKey
from services.ingest.cleaning import change
from services.ingest.rejection import Reason, Rejection, Stage
from shared.datasets import DatasetSpec, FieldSpec, PiiAction
from shared.events import Change, Scalar


class Protector:
    """Applies PII actions under the subjects' data keys."""

    def __init__(self) -> None:
        self._pii: dict[str, list[FieldSpec]] = {}

    def pii_fields(self, spec: DatasetSpec) -> list[FieldSpec]:
        """The spec's PII fields (cached per dataset)."""
        fields = self._pii.get(spec.name)
        if fields is None:
            fields = self._pii[spec.name] = spec.pii_fields
        return fields

    def needs_key(self, spec: DatasetSpec) -> bool:
        """True when the dataset has fields to encrypt or tokenize (both need the data key)."""
        return any(f.pii is not PiiAction.DROP for f in self.pii_fields(spec))

    def protect(self, spec: DatasetSpec, event_id: str, payload: dict[str, Scalar],
                key: DataKey | None, forgotten: bool, changes: list[Change]) -> None:
        """Replace PII values in `payload` in place and append the Changes."""
        for field in self.pii_fields(spec):
            name = field.name
            value = payload.get(name)
            if value is None:
                continue
            if forgotten:
                del payload[name]
                changes.append(change(field=name, action="dropped", detail="subject forgotten"))
            elif field.pii is PiiAction.DROP:
                del payload[name]
                changes.append(change(field=name, action="dropped", detail="pii: drop"))
            elif key is None:
                raise Rejection(Reason.KEY_UNAVAILABLE,
                                f"{name}: the subject's data key cannot be unwrapped",
                                stage=Stage.PROTECT, field=name)
            elif field.pii is PiiAction.TOKENIZE:
                payload[name] = key.tokenize(name, str(value))
                changes.append(change(field=name, action="tokenized",
                                      detail="hmac-sha256, per-subject key"))
            else:
                payload[name] = key.encrypt(event_id, name, str(value))
                changes.append(change(field=name, action="encrypted", detail="aes-256-gcm"))
