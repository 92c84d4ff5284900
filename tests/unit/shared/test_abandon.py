"""reset_on_exit: a process that calls it before exiting resets its connections, so its peer
reads ECONNRESET instead of an orderly end of stream; without the call the same exit closes the
connection normally (real loopback sockets, a real child process)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from shared.lifecycle import parent_death

CHILD = r"""
import os, socket, sys
connection = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
listener = socket.create_server(("127.0.0.1", 0))  # not connected: left alone
armed = 0
if sys.argv[2] == "reset":
    from shared.abandon import reset_on_exit
    armed = reset_on_exit()
# the listener still accepts and carries data after the call
again = socket.create_connection(listener.getsockname())
second, _ = listener.accept()
again.sendall(b"ok")
print(armed, second.recv(10).decode(), flush=True)
os._exit(1)
"""


def _exit_seen_by_peer(mode: str) -> tuple[int, str, bytes | None]:
    """(sockets the child armed before its own second connection, what its listener then
    received, what its peer reads after the child exits: None = reset)."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        child = subprocess.run([sys.executable, "-c", CHILD, str(server.getsockname()[1]), mode],
                               capture_output=True, text=True, timeout=60, check=False,
                               preexec_fn=parent_death())
        accepted, _ = server.accept()
        with accepted:
            try:
                seen: bytes | None = accepted.recv(10)
            except ConnectionResetError:
                seen = None
        armed, received = child.stdout.split()
        return int(armed), received, seen
    finally:
        server.close()


@pytest.mark.parametrize(("mode", "armed", "seen"), [("reset", 1, None), ("plain", 0, b"")])
def test_an_exit_after_reset_on_exit_resets_the_connections(mode: str, armed: int,
                                                             seen: bytes | None) -> None:
    assert _exit_seen_by_peer(mode) == (armed, "ok", seen)
