"""Keyed pseudonyms for data subjects: `ps1:<24 hex of HMAC-SHA256(pseudonym key, subject_id)>`.

Ingest replaces every raw `subject_id` (envelope, Kafka key, the payload's subject field) by its
pseudonym, so nothing after events.raw names a subject in clear: events.clean/governed, the DLQ,
the audit leaves, the privacy ledger and the policy sets in Redis all hold pseudonyms. An
operator who knows a subject computes its pseudonym with the same key (`lepton forget`,
`lepton consent`, `lepton audit prove --subject`). The key is derived from the platform
key, so it is as durable as that key; a pseudonym survives `forget` by design (the forgotten set
needs it to keep withholding the subject) but no PII can be read through it.

Consumes: the platform key (`shared.tokens`). Produces: pseudonym strings.
"""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from shared.config import LeptonSettings
from shared.crypto import KeyedHash
from shared.events import Identifier
from shared.tokens import load_platform_key

PSEUDONYM_VERSION = "ps1"
_PREFIX = PSEUDONYM_VERSION + ":"
_SUBJECT_ID: TypeAdapter[str] = TypeAdapter(Identifier)


class Pseudonymizer:
    """Deterministic keyed pseudonyms of subject ids."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("pseudonym key must be at least 32 bytes")
        self._hash = KeyedHash(key)

    def of(self, subject_id: str) -> str:
        """The pseudonym of a raw subject id (always hashes: a raw id is never trusted)."""
        return _PREFIX + self._hash.hexdigest(subject_id.encode())[:24]

    def normal(self, subject: str) -> str:
        """`subject` when it already is a pseudonym, else its pseudonym (for operator input and
        for stages after ingest, whose input carries pseudonyms)."""
        return subject if is_pseudonym(subject) else self.of(subject)


def operator_subject(pseudonyms: Pseudonymizer, subject: str) -> str:
    """The pseudonym an operator means by `subject`: a subject id as envelopes carry it, or its
    pseudonym; ValueError when it is neither."""
    try:
        return pseudonyms.normal(_SUBJECT_ID.validate_python(subject))
    except ValidationError:
        raise ValueError("a subject id is 1-200 characters of A-Z a-z 0-9 . _ : @ / + = -") \
            from None


def is_pseudonym(value: str) -> bool:
    """True for a string in this module's pseudonym format."""
    return value.startswith(_PREFIX) and len(value) == len(_PREFIX) + 24


def load_pseudonymizer(settings: LeptonSettings) -> Pseudonymizer:
    """The platform pseudonymizer (key derived from the token key)."""
    return Pseudonymizer(load_platform_key(settings).derive("subject-pseudonym"))
