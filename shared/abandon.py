"""Abandoning a process's connections: when a service exits without finishing (the broker
unreachable, the stop deadline passed), its open TCP connections are reset rather than closed.

A peer that has not read what a connection sent (a frozen broker still buffers it in its kernel)
discards it on a reset, while after a normal close it still reads and applies the buffered
requests once it resumes. The embedded broker keeps no transaction state, so a transaction's
records that reached it after a freeze would become visible without the input positions of the
same transaction, and a restart would process that batch again. Apache Kafka aborts such a
transaction in any case: resetting costs nothing there.

Consumes the process's own socket descriptors (/proc/self/fd); produces nothing: it only sets
SO_LINGER to zero on each connected TCP socket, so the process's exit sends a reset.
"""

from __future__ import annotations

import logging
import os
import socket
import struct

log = logging.getLogger(__name__)

RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def reset_on_exit() -> int:
    """Make every connected TCP socket of this process send a reset when it closes; how many."""
    armed = 0
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:  # no procfs: connections close normally
        return 0
    for name in descriptors:
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET,
                                                                   socket.AF_INET6):
                sock.getpeername()  # connected: not a listening socket
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
                armed += 1
        except OSError:
            pass
        finally:
            sock.close()  # the duplicate only: the connection stays open until exit
    log.debug("%d connections will be reset on exit", armed)
    return armed
