"""shared.pseudonym: pseudonyms are the keyed hashes every stage and stored record relies on."""

from __future__ import annotations

import hmac

import pytest

from shared.pseudonym import Pseudonymizer, is_pseudonym


def test_a_pseudonym_is_the_keyed_hash_it_always_was() -> None:
    """Each call, the first or a repeat, equals the standard library's one-shot HMAC-SHA256."""
    key = bytes(range(32))
    pseudonyms = Pseudonymizer(key)
    for subject in ("cust-000009", "", "é", "cust-000009"):
        expected = "ps1:" + hmac.digest(key, subject.encode(), "sha256").hex()[:24]
        assert pseudonyms.of(subject) == expected
        assert is_pseudonym(expected) and pseudonyms.normal(expected) == expected
    assert pseudonyms.normal("cust-1") == pseudonyms.of("cust-1")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Pseudonymizer(bytes(31))
