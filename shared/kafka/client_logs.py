"""What librdkafka clients say, through Python logging: their error callbacks and their own log
lines (the `librdkafka` logger instead of raw `%3|…` lines on stderr), so both carry the
process's log format. A broker that is away makes a client repeat the same error on every
reconnect, several times a second; each kind of message (an error code, a log facility) is
logged the first time and then at most once per REPEAT_LOG_S, saying how many were left out.

Consumes KafkaErrors and librdkafka log records; produces log lines.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Hashable
from typing import Any

REPEAT_LOG_S = 30.0

log = logging.getLogger(__name__)


class RepeatLimiter:
    """The first message of each kind, then one per `every` seconds."""

    def __init__(self, every: float = REPEAT_LOG_S) -> None:
        self.every = every
        self._seen: dict[Hashable, tuple[float, int]] = {}
        self._lock = threading.Lock()  # clients call back from their own polling threads

    def admit(self, kind: Hashable) -> int | None:
        """None to leave this message out; else how many of its kind were left out before."""
        now = time.monotonic()
        with self._lock:
            last, left_out = self._seen.get(kind, (-math.inf, 0))
            if now - last < self.every:
                self._seen[kind] = (last, left_out + 1)
                return None
            self._seen[kind] = (now, 0)
            return left_out

    def note(self, left_out: int) -> str:
        """The suffix that says how many were left out."""
        return f" ({left_out} more like it in the last {self.every:g} s)" if left_out else ""


REPEATS = RepeatLimiter()


class _LeaveOutRepeats(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # confluent-kafka logs ("%s [%s] %s", facility, client name, message)
        args = record.args if isinstance(record.args, tuple) else ()
        left_out = REPEATS.admit(("log", record.levelno, args[0] if args else record.msg))
        if left_out is None:
            return False
        record.msg = f"{record.msg}{REPEATS.note(left_out)}"
        return True


LIBRDKAFKA = logging.getLogger("librdkafka")
LIBRDKAFKA.addFilter(_LeaveOutRepeats())


def log_client_error(error: Any) -> None:
    """A client's error callback: logged as a warning, repeats left out (see module doc)."""
    code = error.code() if hasattr(error, "code") else str(error)
    left_out = REPEATS.admit(("error", code))
    if left_out is not None:
        log.warning("kafka client error: %s%s", error, REPEATS.note(left_out))
