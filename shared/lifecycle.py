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

# A preexec_fn makes subprocess fork rather than vfork, so gRPC's fork handlers run in the child.
# With its fork support on, gRPC restarts its poller there; close_fds then closes the poller's
# epoll descriptor before exec and the child aborts (grpc/grpc#43055). gRPC reads this when it
# is imported, so a launcher that also speaks gRPC imports this module first.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


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
