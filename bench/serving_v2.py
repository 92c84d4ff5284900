"""The Open Inference Protocol v2 part of bench/serving_bench.py: echo servers (grpc.aio
`inference.GRPCInferenceService` and a FastAPI/uvicorn app, both answering a constant) and load
generators for v2 ModelInfer over gRPC (N rows per call, optionally `explain`) and HTTP v2
infer (JSON, aiohttp client)."""

from __future__ import annotations

import asyncio
import time
from functools import cache
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

MODEL = "fraud"
TOKEN = "bench-token"
Load = tuple[int, int, float, list[float], int]  # calls, rows, seconds, latencies, errors


@cache
def _columns() -> list[tuple[str, str, list[Any]]]:
    """(name, datatype, values of 256 rows) per model input."""
    from services.serving.oip import DATATYPES
    from shared.datasets import load_spec
    from tests.integration.test_serving_oip_grpc import full_records
    from tests.unit.serving.support import fitted_transform

    spec = {f.name: f for f in load_spec("transactions").fields}
    rows = full_records(256)
    return [(c.name, DATATYPES[spec[c.name].type], [r[c.name] for r in rows])
            for c in fitted_transform().columns]


def infer_request(rows: int, offset: int = 0, explain: bool = False) -> Any:
    """A v2 ModelInferRequest of `rows` rows (raw little-endian contents, as tritonclient)."""
    import numpy as np

    from services.serving.gen import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL, id=f"b{offset}")
    if explain:
        request.parameters["explain"].bool_param = True
    dtypes = {"FP64": "<f8", "INT64": "<i8", "BOOL": "?"}
    for name, datatype, values in _columns():
        chunk = [values[(offset + i) % len(values)] for i in range(rows)]
        request.inputs.add(name=name, datatype=datatype, shape=[rows])
        if datatype == "BYTES":
            raw = b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in chunk)
        else:
            raw = np.asarray(chunk, dtype=dtypes[datatype]).tobytes()
        request.raw_input_contents.append(raw)
    return request


def http_body(rows: int, offset: int = 0) -> bytes:
    """A JSON v2 infer body of `rows` rows."""
    import orjson

    inputs = [{"name": name, "datatype": datatype, "shape": [rows],
               "data": [values[(offset + i) % len(values)] for i in range(rows)]}
              for name, datatype, values in _columns()]
    return orjson.dumps({"id": f"h{offset}", "inputs": inputs})


async def v2_echo_server(port: int) -> None:
    """grpc.aio inference.GRPCInferenceService answering constant scores."""
    import grpc
    import numpy as np

    from services.serving.gen import grpc_service_pb2 as pb
    from services.serving.gen import grpc_service_pb2_grpc

    class Echo(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ModelInfer(self, request: Any, context: Any) -> Any:
            n = request.inputs[0].shape[0] if request.inputs else 0
            response = pb.ModelInferResponse(model_name=MODEL, model_version="1", id=request.id)
            response.outputs.add(name="score", datatype="FP64", shape=[n])
            response.outputs.add(name="label", datatype="BOOL", shape=[n])
            response.raw_output_contents.extend([np.full(n, 0.5).tobytes(),
                                                 np.zeros(n, "?").tobytes()])
            return response

    server = grpc.aio.server()
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def http_echo_server(port: int) -> None:
    """FastAPI on uvicorn (as serving runs it) answering a constant v2 infer response."""
    import uvicorn

    app = FastAPI()

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str) -> Response:
        await request.body()
        return Response(b'{"model_name":"fraud","model_version":"1","outputs":[{"name":"score",'
                        b'"datatype":"FP64","shape":[1],"data":[0.5]}]}',
                        media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", log_level="warning",
                access_log=False, lifespan="off")


async def load_v2_grpc(addr: str, concurrency: int, seconds: float, rows: int,
                       explain: bool = False) -> Load:
    """ModelInfer calls of `rows` rows from `concurrency` workers for `seconds`."""
    import grpc

    from services.serving.gen import grpc_service_pb2_grpc

    channel = grpc.aio.insecure_channel(addr)
    stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    meta = [("authorization", f"Bearer {TOKEN}")]
    requests = [infer_request(rows, i * rows, explain) for i in range(16)]
    latencies: list[float] = []
    errors = calls = 0
    stop_at = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal errors, calls
        i = n
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                await stub.ModelInfer(requests[i % len(requests)], metadata=meta, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)
            calls += 1
            i += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - began
    await channel.close()
    return calls, calls * rows, elapsed, latencies, errors


async def load_http(url: str, concurrency: int, seconds: float, rows: int) -> Load:
    """HTTP v2 infer (JSON) calls of `rows` rows from `concurrency` workers for `seconds`."""
    import aiohttp

    bodies = [http_body(rows, i * rows) for i in range(16)]
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    latencies: list[float] = []
    errors = calls = 0
    stop_at = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker(n: int) -> None:
            nonlocal errors, calls
            i = n
            while time.perf_counter() < stop_at:
                start = time.perf_counter()
                try:
                    async with session.post(f"{url}/v2/models/{MODEL}/infer",
                                            data=bodies[i % len(bodies)]) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if not ok:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)
                calls += 1
                i += concurrency

        began = time.perf_counter()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        elapsed = time.perf_counter() - began
    return calls, calls * rows, elapsed, latencies, errors
