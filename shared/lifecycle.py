"""Process lifecycle shared by every launcher (`lepton up`, the trainer's worker launcher, test
fixtures): child processes that die with their parent, even when the parent is SIGKILLed.

Linux delivers PR_SET_PDEATHSIG when the thread that forked the child exits, so spawn from the
main thread. Elsewhere the hook does nothing and launchers rely on their own stop paths.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def parent_death(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: the child receives `sig` when this process exits
    (and at once, if this process is already gone by the time the child starts)."""
    parent = os.getpid()
    try:  # resolved here: a forked child of a threaded parent must not dlopen
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        prctl = None

    def arm() -> None:
        if prctl is None:
            return
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return arm
