"""The HTTP/REST API of serving (FastAPI): Open Inference Protocol v2 (`/v2/health/*`, `/v2`,
`/v2/models/{name}[/versions/{v}][/ready|/infer]`, JSON or the binary tensor extension) and
`POST /v1/models/{name}:predict` taking JSON records as `lepton predict` does. The same
Predictor, credentials (`Credentials.check`), W3C trace context (from HTTP headers) and metrics
as the gRPC APIs; errors are `{"error": "..."}` with 400 / 401 / 404 / 413 / 503. OpenAPI at
`/openapi.json`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Annotated, Any

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from opentelemetry.trace import Span, Status, StatusCode
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Match

from services.serving import oip
from services.serving.auth import AuthResult, Credentials
from services.serving.errors import InvalidInput, ModelNotFound, ServingError
from services.serving.explain import explain_predictions
from services.serving.fleet import Fleet
from services.serving.http_infer import decode_infer, infer_response
from services.serving.http_models import (
    InferRequest,
    PredictBody,
    predict_body_error,
    records_of,
)
from services.serving.predictor import Call, Predictor
from services.serving.predictor import Request as Scoring
from services.serving.request_metrics import record_http
from shared.record_trace import server_span
from shared.tracing import get_tracer, traceparent

_tracer = get_tracer(__name__)
_STATUS = {"invalid_argument": 400, "not_found": 404, "unavailable": 503,
           "failed_precondition": 400}
OPEN_PATHS = ("/v2/health/", "/openapi.json", "/docs")
_TRACE_KEYS = (b"traceparent", b"tracestate", b"baggage")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _is_json(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _status(error: ServingError) -> int:
    return _STATUS.get(error.code, 500)


@contextlib.contextmanager
def _span(request: Request, route: str) -> Iterator[Span]:
    carrier: dict[str, str] = {}
    for key, value in request.scope["headers"]:  # only the W3C headers (first of each)
        if key in _TRACE_KEYS:
            carrier.setdefault(key.decode("latin-1"), value.decode("latin-1"))
    method = request.method
    span = server_span(_tracer, f"{method} {route}", carrier,
                       {"http.request.method": method, "http.route": route})
    try:
        yield span
    finally:
        span.end()


def _fail(span: Span, error: ServingError) -> JSONResponse:
    status = _status(error)
    span.set_status(Status(StatusCode.ERROR, str(error)))
    span.set_attribute("http.response.status_code", status)
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    return _error(status, str(error), headers)


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


class _Guard:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): the bearer token on every path
    but health and the API document, the body limit by Content-Length, and the request's
    duration (request_metrics.py)."""

    def __init__(self, app: Any, credentials: Credentials, max_body_bytes: int,
                 routes: list[BaseRoute]) -> None:
        self.app = app
        self.credentials = credentials
        self.max_body_bytes = max_body_bytes
        self.routes = routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer 401 / 413 itself, pass everything else on; time every HTTP request."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, timed_send)
        finally:
            route = scope.get("route") or next(
                (r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)
            record_http(scope["method"], getattr(route, "path", "unmatched"), status,
                        time.perf_counter() - started)

    async def _guarded(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        supplied = headers.get(b"authorization")
        denied: Response | None = None
        if self.credentials.check(supplied, admin=False) is not AuthResult.OK:
            denied = _error(401, "invalid bearer token" if supplied is not None else
                            "missing Authorization header (expected 'Bearer <token>')",
                            {"www-authenticate": "Bearer"})
        else:
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body_bytes:
                denied = _error(413, f"body larger than {self.max_body_bytes} bytes")
        if denied is not None:
            await denied(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(predictor: Predictor, fleet: Fleet, *, credentials: Credentials,
              max_body_bytes: int) -> FastAPI:
    """The FastAPI application of one serving process (every route is a predict-level call:
    the predict or the admin token)."""
    # FastAPI's own telemetry would add a second SERVER span (and one per operation) to every
    # request beside ours, and its request metrics cost ≈ 8 % of a request's CPU beside ours
    # (request_metrics.py); no OTel log provider is set, so its logs went nowhere
    app = FastAPI(title="Lepton serving", version=oip.SERVER_VERSION,
                  description="Open Inference Protocol v2 and lepton predictions over HTTP.",
                  telemetry={"tracing": False, "metrics": False, "logs": False})

    app.add_middleware(_Guard, credentials=credentials, max_body_bytes=max_body_bytes,
                       routes=app.routes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        if first.get("type") == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            return _error(400, f"invalid request: the body is not valid JSON ({reason})")
        if first.get("loc", ("",))[0] == "body" and not _is_json(request):
            # FastAPI's strict Content-Type check left a JSON body unread
            return _error(415, "the body must be JSON, sent with Content-Type: application/json")
        loc = tuple(first.get("loc", ()))
        if loc[:1] == ("body",):
            return _error(400, "invalid request: " + predict_body_error(
                loc[1:], first.get("msg", "invalid"), first.get("type", "")))
        where = ".".join(str(p) for p in loc)
        return _error(400, f"invalid request: {where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.get("/v2/health/live", tags=["v2"])
    async def live() -> dict[str, bool]:
        """Live while the process answers."""
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    async def ready() -> Response:
        """200 once a model has a live version, else 503."""
        return _json({"ready": fleet.ready}, 200 if fleet.ready else 503)

    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> dict[str, Any]:
        """Server name, version and extensions."""
        return {"name": oip.SERVER_NAME, "version": oip.SERVER_VERSION,
                "extensions": list(oip.EXTENSIONS)}

    async def metadata(request: Request, name: str, version: str) -> Response:
        with _span(request, "/v2/models/{name}") as span:
            try:
                model = await asyncio.to_thread(oip.model_for, fleet, name, version)
            except ServingError as error:
                return _fail(span, error)
            return _json(oip.metadata(fleet, model))

    async def model_ready(name: str, version: str) -> Response:
        try:
            host = fleet.host(name)
            pin = oip.parse_version(version)
        except ModelNotFound as error:
            return _error(404, str(error))
        except ServingError as error:
            return _error(_status(error), str(error))
        ok = host.rollout is not None and (not pin or pin in {m.version for m in host.loaded()})
        return _json({"name": host.name, "ready": ok}, 200 if ok else 400)

    async def infer(request: Request, name: str, version: str) -> Response:
        with _span(request, "/v2/models/{name}/infer") as span:
            call = Call.now("http", traceparent(span.get_span_context()))
            try:
                body, tensors = decode_infer(request.headers, await request.body())
                explain_rows = oip.flag((body.parameters or {}).get("explain"))
                answer = await oip.infer(predictor, name, version, body.id or "", tensors,
                                         explain_rows=explain_rows, call=call)
                doc = infer_response(body, answer)
            except ServingError as error:
                return _fail(span, error)
            span.set_attributes({"lepton.model": answer.rows.model.name,
                                 "lepton.model.version": answer.version,
                                 "lepton.batch.size": len(answer.rows.predictions)})
            return _json(doc)

    @app.get("/v2/models/{name}", tags=["v2"])
    async def model_metadata(request: Request, name: str) -> Response:
        """Versions, platform, one input per raw feature, outputs."""
        return await metadata(request, name, "")

    @app.get("/v2/models/{name}/versions/{version}", tags=["v2"])
    async def version_metadata(request: Request, name: str, version: str) -> Response:
        """Metadata of one version."""
        return await metadata(request, name, version)

    @app.get("/v2/models/{name}/ready", tags=["v2"])
    async def ready_model(name: str) -> Response:
        """200 when the model can answer now."""
        return await model_ready(name, "")

    @app.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"])
    async def ready_version(name: str, version: str) -> Response:
        """200 when this version is loaded."""
        return await model_ready(name, version)

    extra = {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/InferRequest"}}}}}

    @app.post("/v2/models/{name}/infer", tags=["v2"], openapi_extra=extra)
    async def model_infer(request: Request, name: str) -> Response:
        """Score N rows given as columnar tensors (the rollout picks the version)."""
        return await infer(request, name, "")

    @app.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"], openapi_extra=extra)
    async def version_infer(request: Request, name: str, version: str) -> Response:
        """Score N rows with a pinned version."""
        return await infer(request, name, version)

    @app.post("/v1/models/{name}:predict", tags=["lepton"])
    async def predict(request: Request, name: str, body: PredictBody,
                      version: Annotated[int, Query(ge=0)] = 0,
                      explain_rows: Annotated[bool, Query(alias="explain")] = False) -> Response:
        """Score JSON records (one object, a list, or {"instances": [...]}), as `lepton
        predict` does; `?version=` pins, `?explain=true` adds attributions."""
        with _span(request, "/v1/models/{name}:predict") as span:
            call = Call.now("http", traceparent(span.get_span_context()))
            try:
                records = records_of(body)
                results = await predictor.predict_batch(
                    [Scoring("", name, version, r, call) for r in records])
                answered = []
                for i, result in enumerate(results):
                    if isinstance(result, InvalidInput):
                        raise InvalidInput(f"records[{i}]: {result}")
                    if isinstance(result, ServingError):  # the model's or server's, not the row's
                        raise result
                    answered.append(result)
                predictions = [_prediction(r) for r in answered]
                if explain_rows:
                    reasons = await asyncio.to_thread(explain_predictions, fleet, records,
                                                      answered)
                    for out, reason in zip(predictions, reasons, strict=True):
                        out["explanation"] = reason.to_dict()
            except ServingError as error:
                return _fail(span, error)
            return _json({"predictions": predictions})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version,
                                 description=app.description, routes=app.routes)
            _, defs = models_json_schema([(InferRequest, "validation")],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                defs.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _prediction(prediction: Any) -> dict[str, Any]:
    return {"request_id": prediction.request_id, "model": prediction.model,
            "version": prediction.version, "score": prediction.score,
            "label": prediction.label, "route": prediction.route.value}

