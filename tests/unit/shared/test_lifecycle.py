"""shared.lifecycle: children spawned with `parent_death` while this process has gRPC calls in
flight still reach exec: gRPC's fork handlers must not run in the child (they restart its poller
there, which aborts once close_fds shuts its epoll descriptor, or deadlock)."""

from __future__ import annotations

import contextlib
import subprocess
import threading
from concurrent import futures

import grpc

from shared.lifecycle import parent_death

SPAWNS = 200


def test_children_exec_while_grpc_calls_are_in_flight() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(4))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()

    def call_forever() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            unknown = channel.unary_unary("/nothing/Here")
            while not stop.is_set():
                with contextlib.suppress(grpc.RpcError):
                    unknown(b"", timeout=1)

    callers = [threading.Thread(target=call_forever) for _ in range(3)]
    for caller in callers:
        caller.start()
    failed: list[int | str] = []
    try:
        for _ in range(SPAWNS):
            try:  # a child can also deadlock in gRPC's fork handlers instead of aborting
                code = subprocess.run(["true"], capture_output=True, timeout=10,
                                      preexec_fn=parent_death()).returncode
            except subprocess.TimeoutExpired:
                failed.append("stuck before exec")
                continue
            if code != 0:
                failed.append(code)
    finally:
        stop.set()
        for caller in callers:
            caller.join(10)
        server.stop(None)
    assert failed == [], f"{len(failed)} of {SPAWNS} children died before exec: {failed[:5]}"
