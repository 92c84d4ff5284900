"""lepton.records_file: a file that changes between the check and the send stops the sending at
the first difference, says what changed, and sends nothing unchecked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from lepton.records_file import CheckedRecords, check_records
from shared.datasets import load_spec
from tests.unit.ingest.samples import valid_docs

SPEC = load_spec("transactions")


def _checked(first: list[bytes], then: list[bytes]) -> CheckedRecords:
    """The records of a file that held `first` when checked and `then` when read again."""
    reads = [first, then]

    def lines() -> Iterator[bytes]:
        return iter(reads.pop(0))

    return CheckedRecords(lines, SPEC, check_records(lines(), SPEC))


def _lines(count: int) -> list[bytes]:
    return [orjson.dumps(d) for d in valid_docs(count, seed=31)]


def test_an_unchanged_file_sends_every_checked_record() -> None:
    lines = _lines(3)
    records = _checked(lines, lines)
    assert [r.value for r in records] == lines
    assert records.changed is None


def test_a_line_broken_in_between_stops_the_send_there() -> None:
    lines = _lines(3)
    records = _checked(lines, [lines[0], b"{", lines[2]])
    assert [r.value for r in records] == lines[:1]
    assert records.changed == "line 2 now cannot be sent: not JSON (unexpected end of data " \
                              "at column 2)"


def test_a_shortened_file_is_named() -> None:
    lines = _lines(3)
    records = _checked(lines, lines[:2])
    assert len(list(records)) == 2
    assert records.changed == "it now holds 2 records, not the 3 checked"


def test_lines_appended_in_between_are_not_sent() -> None:
    lines = _lines(4)
    records = _checked(lines[:3], lines)
    assert [r.value for r in records] == lines[:3]
    assert records.changed is None


def test_a_removed_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "gone.jsonl"
    records = CheckedRecords(lambda: path.open("rb"), SPEC, 2)
    assert list(records) == []
    assert records.changed == "it cannot be read again: No such file or directory"
