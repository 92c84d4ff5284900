"""shared.fast_envelope against pydantic's Envelope: whatever the fast check accepts, pydantic
accepts with the same values and the same JSON and ISO times; the corpus and generated
near-envelopes (odd times, ids, versions, payload values, changes) are compared."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.events import Envelope
from shared.fast_envelope import from_envelope, json_time, lean_envelope
from tests.fuzz.conftest import corpus


def _agree(obj: Any) -> bool:
    """Compare the fast check with pydantic on `obj`; True when the fast path decided."""
    lean = lean_envelope(obj)
    if lean is None:
        return False
    envelope = Envelope.model_validate(obj)  # must not raise: the fast path accepted it
    assert replace(lean, occurred_json=lean.time_json()) == from_envelope(envelope)
    assert lean.time_json() == orjson.loads(orjson.dumps(
        envelope.model_dump(mode="json")))["occurred_at"]
    assert lean.time_iso() == envelope.occurred_at.isoformat()
    return True


@pytest.mark.parametrize("path", corpus("envelope"), ids=lambda p: p.name)
def test_corpus_agrees(path: Path) -> None:
    try:
        obj = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return
    _agree(obj)


def test_a_valid_envelope_takes_the_fast_path() -> None:
    doc = json.loads((Path(__file__).parent / "corpus/envelope/valid.json").read_text())
    assert _agree(doc)
    assert _agree({**doc, "changes": [{"field": "a", "action": "imputed"}]})
    assert _agree({**doc, "occurred_at": datetime(2026, 1, 1, tzinfo=UTC)})


@pytest.mark.parametrize("written", [
    "2026-01-01T00:00:01Z", "2026-01-01T00:00:01.045684Z", "2026-01-01T00:00:01.045600Z",
    "2026-01-01T00:00:01.000000Z", "2026-01-01T00:00:01.0456Z", "2026-01-01T00:00:01.000001Z",
    "2026-01-01T00:00:01+00:00", "2026-01-01T00:00:01-00:00", "2026-01-01T01:00:01.5+01:00",
    "0999-12-31T23:59:59.999999Z"])
def test_a_time_keeps_the_json_pydantic_writes_for_it(written: str) -> None:
    """Kept as written only where that is pydantic's own JSON for it (`_agree` compares)."""
    doc = json.loads((Path(__file__).parent / "corpus/envelope/valid.json").read_text())
    assert _agree({**doc, "occurred_at": written})


def test_what_pydantic_would_coerce_or_refuse_is_left_to_it() -> None:
    doc = json.loads((Path(__file__).parent / "corpus/envelope/valid.json").read_text())
    for change in ({"schema_version": "2"}, {"schema_version": True}, {"event_id": "a\n"},
                   {"occurred_at": 1767225600}, {"privacy": {"mechanism": "x"}},
                   {"payload": {"a": {"b": 1}}}, {"extra": 1}, {"occurred_at": "2026-01-01"}):
        assert lean_envelope({**doc, **change}) is None, change


TIMES = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.datetimes(timezones=st.just(UTC)).map(json_time),  # kept as written when it is canonical
    st.from_regex(r"\A\d{4}-[01]\d-[0-3]\dT[0-2]\d:[0-6]\d:[0-6]\d\.(0{6}|\d{6})Z\Z"),
    st.datetimes(timezones=st.builds(lambda m: timezone(timedelta(minutes=m)),
                                     st.integers(-1439, 1439))).map(lambda d: d.isoformat()),
    st.from_regex(r"\A\d{4}-[01]\d-[0-3]\dT[0-2]\d:[0-6]\d:[0-6]\d(\.\d{1,9})?"
                  r"(Z|z|[+-][0-2]\d:[0-6]\d)?\Z"),
    st.integers(), st.text(max_size=30), st.none(),
)
IDS = st.one_of(st.from_regex(r"\A[A-Za-z0-9._:@/+=-]{1,210}\n?\Z"), st.text(max_size=5),
                st.integers())
NAMES = st.one_of(st.from_regex(r"\A[a-z0-9_.-]{1,110}\Z"), st.sampled_from(["transactions"]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                    st.text(max_size=8))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=2))
PAYLOADS = st.one_of(st.dictionaries(st.text(max_size=102), VALUES, max_size=4), SCALARS)
CHANGES = st.lists(st.fixed_dictionaries(
    {"field": st.one_of(st.text(max_size=5), st.integers()),
     "action": st.sampled_from(["imputed", "clipped", "bogus", 3])},
    optional={"detail": st.one_of(st.none(), st.text(max_size=5), st.integers()),
              "extra": st.just(1)}), max_size=2)
DOCS = st.fixed_dictionaries(
    {"event_id": IDS, "dataset": NAMES, "subject_id": IDS, "occurred_at": TIMES,
     "payload": PAYLOADS},
    optional={"schema_version": st.one_of(st.integers(-1, 3), st.booleans(), st.just("2")),
              "source": st.one_of(st.text(max_size=210), st.integers()),
              "changes": CHANGES, "privacy": st.none(), "audit": st.none()})


@settings(settings.get_profile("fuzz"))
@given(DOCS)
def test_property_the_fast_path_never_accepts_what_pydantic_would_not(doc: dict[str, Any]
                                                                       ) -> None:
    raw = json.dumps(doc).encode()
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return
    _agree(obj)
