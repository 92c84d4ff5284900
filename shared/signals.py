"""Turn SIGINT/SIGTERM/SIGHUP into a threading.Event so loops can finish their batch and stop,
with a deadline that holds even while the main thread is blocked inside a C call.

Python runs signal handlers only in the main thread, between bytecodes: a main thread waiting
in librdkafka (a transaction commit against an unreachable broker) would not even see the
signal until the call returned. The C-level handler still writes the signal number to the
wakeup fd at once, so a watchdog thread reading that fd sets the stop event, and exits the
process if it is still running `grace_s` later (status 1: it could not finish cleanly). That
is no worse than a crash, which every service survives: unfinished work was never committed.
A second signal exits at once (128 + signum).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from shared.abandon import reset_on_exit

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_UNCLEAN = 1


def stop_event(grace_s: float = 8.0) -> threading.Event:
    """An Event set by the first SIGINT, SIGTERM or SIGHUP; the process exits with status 1 if
    still alive `grace_s` seconds later, and at once on a second signal. Main thread only."""
    event = threading.Event()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def handler(_signum: int, _frame: object) -> None:
        # the watchdog does the work; this handler only replaces the default (fatal) action
        return

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    threading.Thread(target=_watch, args=(read_fd, event, grace_s), name="stop-watchdog",
                     daemon=True).start()
    return event


def _watch(read_fd: int, event: threading.Event, grace_s: float) -> None:
    received = 0
    while True:
        data = os.read(read_fd, 64)
        for signum in data:
            if signum not in STOP_SIGNALS:
                continue
            received += 1
            if received > 1:
                _exit(f"second signal {signal.Signals(signum).name}: exiting now", 128 + signum)
            log.info("%s received: stopping (at most %.0f s)", signal.Signals(signum).name,
                     grace_s)
            event.set()
            timer = threading.Timer(grace_s, _exit, args=(
                f"still running {grace_s:.0f} s after the stop signal: exiting without "
                "finishing (nothing unfinished was committed)", EXIT_UNCLEAN))
            timer.daemon = True
            timer.start()


def _exit(message: str, code: int) -> None:
    print(message, file=sys.stderr, flush=True)
    reset_on_exit()  # what a frozen broker still buffers from this process is discarded
    os._exit(code)
