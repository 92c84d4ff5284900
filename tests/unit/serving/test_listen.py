"""Serving's gRPC listener: a taken port fails with one line naming the address and the
setting, not grpc's bare "Failed to bind" (real sockets)."""

from __future__ import annotations

import asyncio
import socket

import grpc
import pytest

from services.serving.server import listen


def test_a_taken_port_is_named_with_its_setting() -> None:
    async def bind_twice(address: str) -> None:
        server = grpc.aio.server()
        try:
            listen(server, address, None)
        finally:
            await server.stop(None)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError) as raised:
            asyncio.run(bind_twice(address))
    assert str(raised.value) == (f"cannot listen on {address} for gRPC: the port is taken or "
                                 "the host is not this machine's (LEPTON_SERVING_ADDR)")


def test_a_free_port_is_returned() -> None:
    async def bind() -> int:
        server = grpc.aio.server()
        try:
            return listen(server, "127.0.0.1:0", None)
        finally:
            await server.stop(None)

    assert asyncio.run(bind()) > 0
