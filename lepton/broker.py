"""The embedded Kafka-protocol broker: librdkafka's built-in mock cluster, served to every
client (confluent-kafka, aiokafka/faust, kcat). In memory and size-capped (about 5 MB a
partition), so nothing durable may live only in it.

The mock cluster listens on 127.0.0.1 on random ports. With `port` set, each mock broker is
advertised as `advertise:port+i` and a TCP relay on `host:port+i` forwards to it, so a broker in
a container (or a test) has a fixed address that other hosts can reach.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import socket
import threading
from pathlib import Path
from types import TracebackType

import confluent_kafka

from shared.config import LeptonSettings
from shared.kafka import ensure_topics

log = logging.getLogger(__name__)

PARTITIONS = 4  # what the mock cluster gives every auto-created topic


def _librdkafka() -> ctypes.CDLL:
    """The librdkafka that confluent-kafka itself loaded (its wheel bundles one)."""
    base = os.path.dirname(os.path.dirname(confluent_kafka.__file__))
    found = sorted(glob.glob(os.path.join(base, "confluent_kafka.libs", "librdkafka*.so*")))
    lib = ctypes.CDLL(found[0] if found else "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p,
                                      ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_handle_mock_cluster.restype = ctypes.c_void_p
    lib.rd_kafka_handle_mock_cluster.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_broker_set_host_port.argtypes = [ctypes.c_void_p, ctypes.c_int32,
                                                       ctypes.c_char_p, ctypes.c_int]
    return lib


class EmbeddedBroker:
    """Owns a mock cluster (and its relays) for as long as it is open."""

    def __init__(self, brokers: int = 1, *, host: str = "127.0.0.1", port: int | None = None,
                 advertise: str | None = None) -> None:
        self._brokers = brokers
        self._host = host
        self._port = port
        self._advertise = advertise or (host if host not in ("0.0.0.0", "") else  # noqa: S104
                                        socket.gethostname())
        self._lib: ctypes.CDLL | None = None
        self._handle: int | None = None
        self._relays: list[_Relay] = []
        self.bootstrap = ""

    def start(self) -> str:
        """Start the cluster and return its bootstrap address."""
        lib = self._lib = _librdkafka()
        conf = lib.rd_kafka_conf_new()
        error = ctypes.create_string_buffer(512)
        for key, value in (("test.mock.num.brokers", str(self._brokers)),
                           ("bootstrap.servers", "unused"), ("log_level", "3")):
            if lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), error, 512) != 0:
                raise RuntimeError(f"mock cluster setting {key}: {error.value.decode()}")
        self._handle = lib.rd_kafka_new(0, conf, error, 512)
        if not self._handle:
            raise RuntimeError(f"mock cluster did not start: {error.value.decode()}")
        cluster = lib.rd_kafka_handle_mock_cluster(self._handle)
        internal = lib.rd_kafka_mock_cluster_bootstraps(cluster).decode().split(",")
        if self._port is None:
            self.bootstrap = ",".join(internal)
            return self.bootstrap
        public = []
        for broker_id, target in enumerate(internal, start=1):
            port = self._port + broker_id - 1
            self._relays.append(_Relay(self._host, port, target))
            lib.rd_kafka_mock_broker_set_host_port(cluster, broker_id, self._advertise.encode(),
                                                   port)
            public.append(f"{self._advertise}:{port}")
        self.bootstrap = ",".join(public)
        return self.bootstrap

    def ensure_topics(self, topics: list[str]) -> dict[str, int]:
        """Make `topics` exist and return their partition counts."""
        settings = LeptonSettings(kafka_bootstrap=self.bootstrap)
        return ensure_topics(settings, topics)

    def stop(self) -> None:
        """Tear the relays and the cluster down."""
        for relay in self._relays:
            relay.close()
        self._relays = []
        if self._handle is not None and self._lib is not None:
            self._lib.rd_kafka_destroy(self._handle)
            self._handle = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Relay:
    """Accepts TCP connections on host:port and pipes each to `target` (host:port)."""

    def __init__(self, host: str, port: int, target: str) -> None:
        target_host, target_port = target.rsplit(":", 1)
        self._target = (target_host, int(target_port))
        self._server = socket.create_server((host, port), reuse_port=False, backlog=64)
        threading.Thread(target=self._accept, name=f"relay-{port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()

    def close(self) -> None:
        self._server.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def write_bootstrap_file(path: Path, bootstrap: str) -> None:
    """Write the address atomically, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(bootstrap + "\n")
    tmp.replace(path)


def serve(
    topics: list[str], bootstrap_file: Path | None, stop: threading.Event, brokers: int = 1, *,
    host: str = "127.0.0.1", port: int | None = None, advertise: str | None = None,
) -> None:
    """Run a broker until `stop` is set; announce its address on stdout and in the file."""
    with EmbeddedBroker(brokers, host=host, port=port, advertise=advertise) as broker:
        counts = broker.ensure_topics(topics)
        if bootstrap_file is not None:
            write_bootstrap_file(bootstrap_file, broker.bootstrap)
        print(f"bootstrap {broker.bootstrap}", flush=True)
        log.info("embedded broker on %s with %d topics", broker.bootstrap, len(counts))
        try:
            stop.wait()
        finally:
            if bootstrap_file is not None:
                bootstrap_file.unlink(missing_ok=True)
