"""reset_on_exit arms every connected TCP socket of the process to send a reset when it closes
(real loopback sockets): the peer then reads ECONNRESET, not an orderly end of stream, and a
listening socket is left alone."""

from __future__ import annotations

import socket

import pytest

from shared.abandon import reset_on_exit


def test_connected_sockets_reset_on_close_and_listeners_are_left_alone() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        assert reset_on_exit() >= 2  # both ends of the connection (and any other of ours)
        client.close()
        with pytest.raises(ConnectionResetError):
            accepted.recv(10)
        # the listener still accepts
        again = socket.create_connection(server.getsockname())
        second, _ = server.accept()
        again.sendall(b"ok")
        assert second.recv(10) == b"ok"
        again.close()
        second.close()
    finally:
        accepted.close()
        server.close()


def test_an_orderly_close_without_it_ends_the_stream() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        client.close()
        assert accepted.recv(10) == b""
    finally:
        accepted.close()
        server.close()
