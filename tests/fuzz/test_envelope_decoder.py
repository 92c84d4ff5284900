"""Fuzz shared.events.decode_envelope: any bytes give an Envelope or an EnvelopeError with a
known kind, never another exception; the committed corpus is replayed first."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import Envelope, EnvelopeError, decode_envelope
from tests.fuzz.conftest import corpus

KINDS = {"bad_json", "too_large", "missing_field", "invalid_field", "invalid"}
FALLBACK_TIME = datetime(2024, 1, 1, tzinfo=UTC)


def _check(data: bytes | str) -> None:
    kind = None
    try:
        envelope = decode_envelope(data, fallback_event_id="fb-1", fallback_time=FALLBACK_TIME)
    except EnvelopeError as error:
        kind = error.kind
    if kind is not None:
        assert kind in KINDS, kind
        return
    assert isinstance(envelope, Envelope)
    assert envelope.event_id
    assert isinstance(envelope.payload, dict)


@pytest.mark.parametrize("path", corpus("envelope"), ids=lambda p: p.name)
def test_corpus_replays(path: Path) -> None:
    _check(path.read_bytes())


def test_corpus_holds_a_valid_envelope() -> None:
    decoded = decode_envelope((Path(__file__).parent / "corpus/envelope/valid.json").read_bytes())
    assert decoded.event_id == "e-1"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=20)
seed = json.loads((Path(__file__).parent / "corpus/envelope/valid.json").read_text())
envelope_like = st.fixed_dictionaries(
    {}, optional={k: st.one_of(st.just(v), json_values) for k, v in seed.items()})


@settings(settings.get_profile("fuzz"))
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@settings(settings.get_profile("fuzz"))
@given(envelope_like, st.dictionaries(st.text(max_size=10), json_values, max_size=3))
def test_envelope_shaped_json(doc: dict[str, object], extra: dict[str, object]) -> None:
    _check(json.dumps({**doc, **extra}))


@settings(settings.get_profile("fuzz"))
@given(st.sampled_from(corpus("envelope")), st.data())
def test_mutated_corpus(path: Path, data: st.DataObject) -> None:
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    _check(bytes(raw))
