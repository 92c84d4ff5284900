"""Append-only segment files: newline-terminated records in `<dir>/<first line:012d>.seg`.

The durable store under the audit log and the privacy ledger. A writer appends, rolls to a new
segment at a size limit and fsyncs before the caller commits anything that depends on the
lines. A crash can leave a torn final line (no newline); readers ignore it and the next writer
truncates it away, since nothing was committed on its strength. Segment names carry their
first line number, so a missing or renamed segment is detected as a gap. A scanned or
appending log knows where each line starts (4 bytes a line), so `read(n)` is one seek.
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.durable import fsync_dir

SUFFIX = ".seg"


class SegmentError(RuntimeError):
    """The segment files are not a contiguous sequence of whole lines."""


def segment_files(directory: Path) -> list[tuple[int, Path]]:
    """(first line number, path) of every segment in `directory`, in order."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if path.suffix != SUFFIX:
            continue
        try:
            first = int(path.stem)
        except ValueError:
            raise SegmentError(f"{path}: not a segment name (<first line>.seg)") from None
        found.append((first, path))
    return sorted(found)


class SegmentLog:
    """An append-only sequence of lines stored in rolling segment files."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20,
                 fsync: bool = True) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.count = 0
        self.torn_bytes = 0
        self._handle: BinaryIO | None = None
        self._handle_size = 0
        self._dirty = False
        self._scanned = False
        self._firsts: list[int] = []  # first line number of each segment, and its path
        self._paths: list[Path] = []
        self._starts = array("I")  # each line's byte offset in its segment

    def scan(self) -> Iterator[bytes]:
        """Yield every complete line in order (without its newline); sets `count`/`torn_bytes`.

        Raises SegmentError when a segment is missing, misnamed or a non-final segment ends
        without a newline.
        """
        self.count = 0
        self.torn_bytes = 0
        self._scanned = False
        self._firsts, self._paths, self._starts = [], [], array("I")
        files = segment_files(self.directory)
        for position, (first, path) in enumerate(files):
            if first != self.count:
                raise SegmentError(
                    f"{path.name}: starts at line {first} but {self.count} lines precede it "
                    "(a segment is missing or was renamed)")
            self._firsts.append(first)
            self._paths.append(path)
            data = path.read_bytes()
            body, sep, tail = data.rpartition(b"\n")
            if tail:
                if position != len(files) - 1:
                    raise SegmentError(f"{path.name}: ends inside a line but is not the last")
                self.torn_bytes = len(tail)
            if not sep:
                continue
            start = 0
            for line in body.split(b"\n"):
                self._starts.append(start)
                start += len(line) + 1
                self.count += 1
                yield line
        self._scanned = True

    def read(self, number: int) -> bytes:
        """Line `number` of a log that was scanned or is appending (without its newline)."""
        if not self._scanned or not 0 <= number < self.count:
            raise IndexError(f"line {number} of {self.count} (or the log was not scanned)")
        segment = bisect_right(self._firsts, number) - 1
        if segment == len(self._paths) - 1 and self._handle is not None:
            self._handle.flush()  # the line may still sit in the writer's buffer
        start = self._starts[number]
        last = number + 1 == self.count or (segment + 1 < len(self._firsts)
                                            and self._firsts[segment + 1] == number + 1)
        with self._paths[segment].open("rb") as handle:
            handle.seek(start)
            if not last:
                return handle.read(self._starts[number + 1] - start - 1)
            line, newline, _ = handle.read().partition(b"\n")
        if not newline:
            raise SegmentError(f"{self._paths[segment].name}: line {number} is torn")
        return line

    def open_for_append(self) -> None:
        """Scan (counting lines) unless just scanned, cut any torn final line, and open the
        last segment."""
        if not self._scanned:
            for _ in self.scan():
                pass
        self.directory.mkdir(parents=True, exist_ok=True)
        files = segment_files(self.directory)
        if files:
            path = files[-1][1]
            if self.torn_bytes:
                with path.open("r+b") as handle:
                    handle.truncate(path.stat().st_size - self.torn_bytes)
                    os.fsync(handle.fileno())
                self.torn_bytes = 0
            self._open(path)
        else:
            self._open_new(0)

    def _path_for(self, first: int) -> Path:
        return self.directory / f"{first:012d}{SUFFIX}"

    def _open_new(self, first: int) -> None:
        self._firsts.append(first)
        self._paths.append(self._path_for(first))
        self._open(self._paths[-1])

    def _open(self, path: Path) -> None:
        self._handle = path.open("ab")
        self._handle_size = self._handle.tell()
        if self.fsync:
            fsync_dir(self.directory)

    def append(self, line: bytes) -> int:
        """Append one line (no newline inside) and return its line number."""
        return self.append_many([line])

    def append_many(self, lines: list[bytes]) -> int:
        """Append lines (no newline inside any) in as few writes as the segment size allows
        (one, unless a segment fills up); the line number of the first."""
        if any(b"\n" in line for line in lines):
            raise ValueError("a segment line cannot contain a newline")
        if self._handle is None:
            raise RuntimeError("call open_for_append() first")
        first = self.count
        chunk: list[bytes] = []
        for line in lines:  # roll before a line when the segment is full, as one by one would
            if self._handle_size >= self.segment_bytes and self._handle_size > 0:
                self._write(chunk)
                chunk = []
                self.sync()
                self._handle.close()
                self._open_new(self.count)
            chunk.append(line)
            self._starts.append(self._handle_size)
            self._handle_size += len(line) + 1
            self.count += 1
        self._write(chunk)
        return first

    def _write(self, lines: list[bytes]) -> None:
        if lines and self._handle is not None:
            self._handle.write(b"\n".join(lines) + b"\n")
            self._dirty = True

    def sync(self) -> None:
        """Flush appended lines to the OS, and to disk when fsync is on."""
        if self._handle is None or not self._dirty:
            return
        self._handle.flush()
        if self.fsync:
            os.fsync(self._handle.fileno())
        self._dirty = False

    def close(self) -> None:
        """Sync and close the open segment."""
        if self._handle is not None:
            self.sync()
            self._handle.close()
            self._handle = None

