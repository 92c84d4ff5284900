"""`lepton produce --file`: a producer's own records, one JSON object a line, all checked before
anything is sent.

Consumes a JSON-lines file (or stdin), read twice: checked, then sent (a file that changed in
between stops the sending where it differs). Produces `Outgoing`
records for events.raw: an envelope (a line with a `payload` object) as written, with `dataset`
filled in from `--dataset` where it is missing; a bare payload wrapped in an envelope, its
subject and event id taken from the spec's subject and id fields (the event id makes a resend
a duplicate that ingest drops). Only what routing needs is checked here (an object, a subject
to key by); validating the fields is ingest's job, and its dead letters say why. Error
messages name lines, never their contents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import orjson

from lepton.produce import Outgoing
from shared.datasets import DatasetSpec, Role

SHOWN = 5  # bad lines named in the error


class RecordsFileError(ValueError):
    """Lines of the file that cannot be sent."""

    def __init__(self, problems: list[str], bad: int) -> None:
        more = f" (and {bad - len(problems)} more)" if bad > len(problems) else ""
        super().__init__(f"{bad} line(s) cannot be sent: " + "; ".join(problems) + more)


def check_records(lines: Iterable[bytes], spec: DatasetSpec, limit: int | None = None) -> int:
    """How many records the first `limit` lines hold (bare payloads taken as `spec`'s); or
    RecordsFileError naming the bad lines."""
    problems: list[str] = []
    good = bad = 0
    for number, found in _scan(lines, spec, limit):
        if isinstance(found, Outgoing):
            good += 1
        else:
            bad += 1
            if len(problems) < SHOWN:
                problems.append(f"line {number}: {found}")
    if bad:
        raise RecordsFileError(problems, bad)
    return good


class CheckedRecords:
    """The `total` records of lines `check_records` passed, read again to send. If the file
    changed in between, iterating stops at the first difference and `changed` says what it
    was (nothing unchecked is sent)."""

    def __init__(self, lines: Callable[[], Iterable[bytes]], spec: DatasetSpec,
                 total: int) -> None:
        self._lines, self._spec, self.total = lines, spec, total
        self.changed: str | None = None

    def __iter__(self) -> Iterator[Outgoing]:
        read = 0
        try:
            for number, found in _scan(self._lines(), self._spec, self.total):
                if not isinstance(found, Outgoing):
                    self.changed = f"line {number} now cannot be sent: {found}"
                    return
                read += 1
                yield found
        except OSError as error:
            self.changed = f"it cannot be read again: {error.strerror}"
            return
        if read < self.total:
            self.changed = f"it now holds {read} records, not the {self.total} checked"


def _scan(lines: Iterable[bytes], spec: DatasetSpec, limit: int | None
          ) -> Iterator[tuple[int, Outgoing | str]]:
    """(line number, its record or what is wrong with it) for each non-blank line."""
    subjects, ids = spec.by_role(Role.SUBJECT), spec.by_role(Role.ID)
    fields = (subjects[0].name if subjects else None, ids[0].name if ids else None)
    seen = 0
    for number, line in enumerate(lines, 1):
        if limit is not None and seen >= limit:
            return
        if not line.strip():
            continue
        seen += 1
        try:
            yield number, _record(line, spec.name, *fields)
        except orjson.JSONDecodeError as error:  # its message holds no input, only a position
            yield number, f"not JSON ({error.msg} at column {error.colno})"
        except ValueError as error:
            yield number, str(error)


def _record(line: bytes, dataset: str, subject_field: str | None, id_field: str | None
            ) -> Outgoing:
    line = line.strip()
    doc = orjson.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    if "payload" in doc:
        if not isinstance(doc["payload"], dict):
            raise ValueError("envelope's payload is not an object")
        subject = doc.get("subject_id")
        if not isinstance(subject, str) or not subject:
            raise ValueError("envelope has no subject_id (the record's key)")
        value = line
        if "dataset" not in doc:
            doc["dataset"] = dataset
            value = orjson.dumps(doc)
        if not isinstance(doc["dataset"], str):
            raise ValueError("envelope's dataset is not a string")
        return Outgoing(subject, value, doc["dataset"], _text(doc.get("event_id")))
    if subject_field is None:
        raise ValueError(f"dataset {dataset} names no subject field: send envelopes")
    subject = doc.get(subject_field)
    if not isinstance(subject, str) or not subject:
        raise ValueError(f"no subject: field {subject_field!r} is missing or not a string "
                         f"(dataset {dataset})")
    event_id = _text(doc.get(id_field)) if id_field else None
    envelope = {"dataset": dataset, "subject_id": subject, "source": "lepton-produce-file",
                "payload": doc, **({"event_id": event_id} if event_id else {})}
    return Outgoing(subject, orjson.dumps(envelope), dataset, event_id)


def _text(value: object) -> str | None:
    """An id as text (strings and integers), else None."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value) or None
