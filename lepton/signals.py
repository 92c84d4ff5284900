"""Turn SIGINT/SIGTERM into a threading.Event so loops can finish their batch and stop."""

from __future__ import annotations

import signal
import threading


def stop_event() -> threading.Event:
    """An Event set by the first SIGINT or SIGTERM; a second signal exits at once."""
    event = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if event.is_set():
            raise SystemExit(128 + signum)
        event.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return event
