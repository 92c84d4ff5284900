"""The origin header an output carries on a broker without transaction state round-trips, and a
malformed one (another producer's record in an output topic) reads as none, never an error."""

from __future__ import annotations

import pytest
from confluent_kafka import Message

from shared.events import Header
from shared.stage.written import origin_header, origin_of


def test_an_origin_header_names_its_record_and_reads_back() -> None:
    consumed = Message(topic="p.events.raw", partition=3, offset=2400)
    header = origin_header(consumed)
    assert header == (Header.ORIGIN, b"p.events.raw/3/2400")
    output = Message(topic="p.events.clean", headers=[("content-type", b"x"), header])
    assert origin_of(output) == (("p.events.raw", 3), 2400)


@pytest.mark.parametrize("value", [b"", b"raw", b"raw/x/1", b"raw/1/", b"\xff/1/2", b"a/1/2/"])
def test_a_malformed_origin_reads_as_none(value: bytes) -> None:
    assert origin_of(Message(topic="t", headers=[(Header.ORIGIN, value)])) is None


def test_a_record_without_headers_has_no_origin() -> None:
    assert origin_of(Message(topic="t")) is None
