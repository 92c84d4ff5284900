"""Run the HTTP API (an ASGI app) with uvicorn inside the serving process's event loop, on
`LEPTON_SERVING_HTTP_ADDR`, with the same TLS (and mTLS) settings as gRPC. Port 0 binds a free
port, reported by `start()`."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

import uvicorn

if TYPE_CHECKING:
    from services.serving.config import ServingSettings

log = logging.getLogger(__name__)


def _bind(address: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listening
    # socket says TCP (with proto 0, Nagle + delayed ACK add ~40 ms to every response)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {address} for HTTP: {error}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the serving process owns SIGINT/SIGTERM and stops
    this server itself (uvicorn would take the signal and re-raise it after its shutdown)."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until `should_exit`, leaving signal handling alone."""
        await self._serve(sockets)


class HttpServer:
    """One uvicorn server for `app`, started and stopped with the serving process."""

    def __init__(self, app: Any, settings: ServingSettings) -> None:
        self.settings = settings
        tls: dict[str, Any] = {}
        if settings.serving_tls_cert is not None and settings.serving_tls_key is not None:
            tls = {"ssl_certfile": str(settings.serving_tls_cert),
                   "ssl_keyfile": str(settings.serving_tls_key)}
            if settings.serving_tls_client_ca is not None:
                tls.update(ssl_ca_certs=str(settings.serving_tls_client_ca),
                           ssl_cert_reqs=ssl.CERT_REQUIRED)
        self.tls = bool(tls)
        self.config = uvicorn.Config(app, http="httptools", lifespan="off", log_level="warning",
                                     access_log=False, server_header=False,
                                     timeout_graceful_shutdown=3, **tls)
        self.server = _Server(self.config)
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the bound port."""
        sock = _bind(self.settings.serving_http_addr)
        self.port = int(sock.getsockname()[1])
        self._task = asyncio.create_task(self.server.serve(sockets=[sock]))
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("serving HTTP on %s (port %d, %s)", self.settings.serving_http_addr,
                 self.port, "TLS" if self.tls else "plaintext")
        return self.port

    async def stop(self) -> None:
        """Finish in-flight requests and close."""
        if self._task is None:
            return
        self.server.should_exit = True
        await self._task
