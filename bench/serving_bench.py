"""Serving benchmark: QPS and p50/p99 of unary Predict and PredictBatch at several concurrency
levels, with and without dynamic batching, against a minimal grpc.aio echo server (same proto,
constant answer) in the same run; the OIP v2 paths (gRPC ModelInfer with 1 and 32 rows, HTTP v2
infer at concurrency 1/8/32) against a v2 grpc.aio echo and an HTTP (FastAPI/uvicorn) echo, and
the cost of `explain=true` (bench/serving_v2.py); then the worst latency while the model is
hot-swapped.

Run `python bench/serving_bench.py [--seconds 2 --rounds 2]`; prints markdown. Starts its
own embedded broker when LEPTON_KAFKA_BOOTSTRAP is unset and uses Redis at LEPTON_REDIS_URL
(default local db 15) under a private prefix. Servers and load generator are separate
processes; the servers are measured round-robin so load from elsewhere hits all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import serving_v2  # noqa: E402

from shared.lifecycle import parent_death  # noqa: E402

TOKEN = "bench-token"
MODEL = "fraud"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _echo_server(port: int) -> None:
    import grpc

    from services.serving.gen import serving_pb2 as pb
    from services.serving.gen import serving_pb2_grpc

    class Echo(serving_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request: Any, context: Any) -> Any:
            return pb.PredictResponse(request_id=request.request_id, model=MODEL, version=1,
                                      score=0.5, route=pb.ROUTE_LIVE)

        async def PredictBatch(self, request: Any, context: Any) -> Any:
            return pb.PredictBatchResponse(responses=[
                pb.PredictResponse(request_id=r.request_id, model=MODEL, version=1, score=0.5)
                for r in request.requests])

    server = grpc.aio.server()
    serving_pb2_grpc.add_PredictionServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@dataclass
class Result:
    """One load point."""

    calls: int
    rows: int
    seconds: float
    latencies: list[float]
    errors: int

    @property
    def qps(self) -> float:
        """Calls a second."""
        return self.calls / self.seconds

    def pct(self, q: float) -> float:
        """Latency percentile in ms."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _load(addr: str, concurrency: int, seconds: float, batch: int,
                on_tick: Any = None) -> Result:
    import grpc

    from services.serving.client import auth_metadata, predict_request
    from services.serving.gen import serving_pb2 as pb
    from services.serving.gen import serving_pb2_grpc
    from tests.unit.serving.support import record

    channel = grpc.aio.insecure_channel(addr)
    stub = serving_pb2_grpc.PredictionServiceStub(channel)
    meta = auth_metadata(TOKEN)
    singles = [predict_request(record(i), request_id=f"b{i}") for i in range(256)]
    batches = [pb.PredictBatchRequest(requests=singles[i:i + batch])
               for i in range(0, 256 - batch + 1, max(batch, 1))] if batch > 1 else []
    latencies: list[float] = []
    stamps: list[float] = []
    errors = 0
    calls = 0
    stop_at = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal errors, calls
        i = n
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                if batch > 1:
                    await stub.PredictBatch(batches[i % len(batches)], metadata=meta,
                                            timeout=30)
                else:
                    await stub.Predict(singles[i % len(singles)], metadata=meta, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            end = time.perf_counter()
            latencies.append(end - start)
            stamps.append(start)
            calls += 1
            i += concurrency

    began = time.perf_counter()
    tasks = [asyncio.create_task(worker(n)) for n in range(concurrency)]
    if on_tick is not None:
        await on_tick()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    await channel.close()
    result = Result(calls, calls * max(batch, 1), elapsed, latencies, errors)
    result.stamps = stamps  # type: ignore[attr-defined]
    return result


class Platform:
    """Broker, registry with models, and server processes for the benchmark."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="serving-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.http: dict[str, str] = {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTON_")}
        self.env.update({
            "LEPTON_REDIS_URL": os.environ.get("LEPTON_REDIS_URL", "redis://127.0.0.1:6379/15"),
            "LEPTON_REDIS_PREFIX": f"bench:{uuid.uuid4().hex[:8]}:",
            "LEPTON_DATA_DIR": str(self.tmp / "data"),
            "LEPTON_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:6]}.",
            "LEPTON_SERVING_AUTH_TOKEN": TOKEN, "LEPTON_SERVING_ADMIN_TOKEN": "bench-admin",
            "LEPTON_SERVING_KAFKA": "false",
            "LEPTON_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
        })
        bootstrap = os.environ.get("LEPTON_KAFKA_BOOTSTRAP")
        if not bootstrap:
            path = self.tmp / "bootstrap"
            self._spawn([sys.executable, "-m", "lepton", "broker", "--bootstrap-file",
                         str(path)])
            deadline = time.monotonic() + 30
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            bootstrap = path.read_text().strip()
        self.env["LEPTON_KAFKA_BOOTSTRAP"] = bootstrap
        os.environ.update(self.env)

    def _spawn(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[
            bytes]:
        proc = subprocess.Popen(args, env={**self.env, **(env or {})}, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=parent_death())
        self.procs.append(proc)
        return proc

    def settings(self) -> Any:
        """Serving settings of this platform."""
        from services.serving.config import ServingSettings

        return ServingSettings()

    def server(self, **env: str) -> tuple[subprocess.Popen[bytes], str]:
        """Start `python -m services.serving`; returns it once SERVING."""
        port = _free_port()
        addr = f"127.0.0.1:{port}"
        http = f"127.0.0.1:{_free_port()}"
        proc = self._spawn([sys.executable, "-m", "services.serving"],
                           {"LEPTON_SERVING_ADDR": addr, "LEPTON_SERVING_HTTP_ADDR": http,
                            **env})
        _wait_serving(addr, proc)
        self.http[addr] = f"http://{http}"
        return proc, addr

    def echo(self, kind: str = "--echo-server") -> tuple[subprocess.Popen[bytes], str]:
        """Start a minimal echo server (lepton gRPC, v2 gRPC or HTTP)."""
        port = _free_port()
        proc = self._spawn([sys.executable, str(Path(__file__).resolve()), kind, str(port)])
        addr = f"127.0.0.1:{port}"
        if kind == "--http-echo-server":
            _wait_tcp(addr, proc)
            self.http[addr] = f"http://{addr}"
        else:
            _wait_port(addr, proc)
        return proc, addr

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM and reap one process."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop everything started."""
        for proc in reversed(self.procs):
            self.stop(proc)


def _wait_port(addr: str, proc: subprocess.Popen[bytes]) -> None:
    import grpc

    channel = grpc.insecure_channel(addr)
    try:
        grpc.channel_ready_future(channel).result(timeout=30)
    finally:
        channel.close()
    if proc.poll() is not None:
        raise RuntimeError(f"server at {addr} exited")


def _wait_tcp(addr: str, proc: subprocess.Popen[bytes]) -> None:
    host, _, port = addr.rpartition(":")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server at {addr} did not listen")


def _wait_serving(addr: str, proc: subprocess.Popen[bytes]) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = grpc.insecure_channel(addr)
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("serving exited during startup")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    finally:
        channel.close()
    raise RuntimeError("serving did not become SERVING")


@dataclass
class Point:
    """Merged rounds of one scenario at one concurrency."""

    calls: int = 0
    rows: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    errors: int = 0

    def __post_init__(self) -> None:
        self.latencies: list[float] = []

    def add(self, result: Result, cpu_seconds: float) -> None:
        """Merge one round."""
        self.calls += result.calls
        self.rows += result.rows
        self.seconds += result.seconds
        self.cpu += cpu_seconds
        self.errors += result.errors
        self.latencies.extend(result.latencies)

    @property
    def qps(self) -> float:
        """Calls a second over all rounds."""
        return self.calls / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """Latency percentile in ms."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0


def _measure(addr: str, pid: int, concurrency: int, seconds: float, batch: int,
             kind: str = "lepton", explain: bool = False) -> tuple[Result, float]:
    """One load point against one server; `kind` lepton | v2 | http."""
    import psutil

    proc = psutil.Process(pid)
    before = proc.cpu_times()
    if kind == "lepton":
        result = asyncio.run(_load(addr, concurrency, seconds, batch))
    else:
        load = serving_v2.load_v2_grpc(addr, concurrency, seconds, batch, explain) \
            if kind == "v2" else serving_v2.load_http(addr, concurrency, seconds, batch)
        result = Result(*asyncio.run(load))
    after = proc.cpu_times()
    return result, (after.user + after.system) - (before.user + before.system)


def _row(label: str, conc: int, point: Point, echo: Point | None) -> str:
    ratio = f"{point.qps / echo.qps:.2f}" if echo else "1"
    cpu = point.cpu / point.calls * 1e6 if point.calls else 0.0
    return (f"| {label} | {conc} | {point.qps:,.0f} | {point.rows / point.seconds:,.0f} | "
            f"{point.pct(0.5):.2f} | {point.pct(0.99):.2f} | {cpu:,.0f} | {ratio} | "
            f"{point.errors} |")


async def _swap_run(addr: str, platform: Platform, cards: list[Any], seconds: float,
                    concurrency: int) -> tuple[Result, list[tuple[float, float]]]:
    from tests.unit.serving.support import announce

    windows: list[tuple[float, float]] = []
    settings = platform.settings()

    async def swaps() -> None:
        await asyncio.to_thread(announce, settings, cards[0], "shadow")
        gap = seconds / (len(cards) + 1)
        for card in cards:
            await asyncio.sleep(gap)
            start = time.perf_counter()
            await asyncio.to_thread(announce, settings, card)
            windows.append((start, start + 0.5))

    result = await _load(addr, concurrency, seconds, 1, on_tick=swaps)
    return result, windows


def _print_v2(points: dict[tuple[str, int, int], Point],
              v2_points: list[tuple[str, int, int, bool]]) -> None:
    labels = {"v2 echo": "v2 ModelInfer, echo server (grpc.aio)", "v2": "v2 ModelInfer (gRPC)",
              "http echo": "HTTP v2 infer, echo (FastAPI/uvicorn)", "http": "HTTP v2 infer",
              "v2 explain": "v2 ModelInfer, explain=true"}
    echo_of = {"v2": "v2 echo", "http": "http echo", "v2 explain": "v2 echo"}
    for name, conc, rows, explain in v2_points:
        key = f"{name}{' explain' if explain else ''}"
        base = points.get((echo_of[key], conc, rows)) if key in echo_of else None
        print(_row(f"{labels[key]} ×{rows}", conc, points[(key, conc, rows)], base))


def main() -> None:
    """Run every load point (servers interleaved round by round) and print markdown."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0, help="Per round and point.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--echo-server", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--v2-echo-server", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--http-echo-server", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server is not None:
        asyncio.run(_echo_server(args.echo_server))
        return
    if args.v2_echo_server is not None:
        asyncio.run(serving_v2.v2_echo_server(args.v2_echo_server))
        return
    if args.http_echo_server is not None:
        serving_v2.http_echo_server(args.http_echo_server)
        return
    from shared.models.registry import Registry
    from tests.unit.serving.support import save_model

    platform = Platform()
    try:
        settings = platform.settings()
        cards = [save_model(settings, seed=i) for i in range(6)]
        Registry(settings).set_live(MODEL, cards[0].version)
        echo, echo_addr = platform.echo()
        plain, plain_addr = platform.server(LEPTON_SERVING_BATCHING="false")
        batched, batched_addr = platform.server(LEPTON_SERVING_BATCHING="true")
        servers = {"echo": (echo, echo_addr), "plain": (plain, plain_addr),
                   "batched": (batched, batched_addr)}
        for _, addr in servers.values():
            asyncio.run(_load(addr, 8, 0.5, 1))
        v2_echo, v2_echo_addr = platform.echo("--v2-echo-server")
        http_echo, http_echo_addr = platform.echo("--http-echo-server")
        v2_targets = {  # (label, kind, proc, target, rows, explain) -> measured at levels
            "v2 echo": ("v2", v2_echo, v2_echo_addr), "v2": ("v2", plain, plain_addr),
            "http echo": ("http", http_echo, platform.http[http_echo_addr]),
            "http": ("http", plain, platform.http[plain_addr])}
        v2_points = [(name, conc, rows, explain) for name in v2_targets for conc, rows, explain
                     in ((1, 1, False), (8, 1, False), (32, 1, False), (8, 32, False))
                     if not (name.startswith("http") and rows > 1)]
        v2_points += [("v2", 8, 1, True), ("v2", 8, 32, True)]
        for kind, _, target in v2_targets.values():
            _measure(target, plain.pid, 8, 0.5, 1, kind)
        _measure(plain_addr, plain.pid, 1, 0.5, 1, "v2", True)  # first explain imports captum
        levels = (1, 8, 32)
        points: dict[tuple[str, int, int], Point] = {}
        for _ in range(args.rounds):
            for conc in levels:
                for name, (proc, addr) in servers.items():
                    result, cpu = _measure(addr, proc.pid, conc, args.seconds, 1)
                    points.setdefault((name, conc, 1), Point()).add(result, cpu)
            for name in ("echo", "plain"):
                proc, addr = servers[name]
                result, cpu = _measure(addr, proc.pid, 8, args.seconds, 32)
                points.setdefault((name, 8, 32), Point()).add(result, cpu)
            for name, conc, rows, explain in v2_points:
                kind, proc, target = v2_targets[name]
                result, cpu = _measure(target, proc.pid, conc, args.seconds, rows, kind, explain)
                points.setdefault((f"{name}{' explain' if explain else ''}", conc, rows),
                                  Point()).add(result, cpu)
        platform.stop(v2_echo)
        platform.stop(http_echo)
        platform.stop(echo)
        platform.stop(batched)
        swap, windows = asyncio.run(_swap_run(plain_addr, platform, cards[1:],
                                              max(args.seconds * 3, 6.0), 8))
        platform.stop(plain)
        during = [lat for lat, start in zip(swap.latencies, swap.stamps, strict=True)  # type: ignore[attr-defined]
                  if any(a <= start <= b for a, b in windows)]
        steady = sorted(lat for lat, start in zip(swap.latencies, swap.stamps, strict=True)  # type: ignore[attr-defined]
                        if not any(a <= start <= b for a, b in windows))
        steady_p99 = steady[int(0.99 * len(steady))] * 1000
        worst = max(during) * 1000 if during else float("nan")
        labels = {"echo": "echo server (grpc.aio, constant answer)",
                  "plain": "Predict, no batching",
                  "batched": "Predict, dynamic batching (64 / 1 ms)"}
        print("## Serving\n")
        print(f"`python bench/serving_bench.py` ({args.rounds} interleaved rounds × "
              f"{args.seconds:g} s per point). Server and load generator (one grpc.aio process) "
              "are separate processes on the same 2-core box; model: transactions MLP "
              "(hidden 8), auth on, OTel SDK on. `server µs/call` is the server process's CPU "
              "time per call (robust to load from other processes); the ratio compares calls/s "
              "with the echo server at the same concurrency.\n")
        print("| scenario | concurrency | calls/s | rows/s | p50 ms | p99 ms | server µs/call "
              "| ratio to echo | errors |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in ("echo", "plain", "batched"):
            for conc in levels:
                echo_point = points[("echo", conc, 1)] if name != "echo" else None
                print(_row(labels[name], conc, points[(name, conc, 1)], echo_point))
        print(_row("PredictBatch ×32, echo server", 8, points[("echo", 8, 32)], None))
        print(_row("PredictBatch ×32", 8, points[("plain", 8, 32)], points[("echo", 8, 32)]))
        _print_v2(points, v2_points)
        print(f"\nHot-swap under load (Predict, no batching, concurrency 8, a shadow then "
              f"{len(cards) - 1} promotions by announcement): {swap.calls:,} calls, "
              f"{swap.errors} errors; worst latency within 0.5 s after a swap "
              f"{worst:.2f} ms vs steady p99 {steady_p99:.2f} ms of the same run "
              f"(ratio {worst / steady_p99:.2f}, goal ≤ 3).")
    finally:
        platform.close()


if __name__ == "__main__":
    main()
