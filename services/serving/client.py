"""A small synchronous client of the serving API (used by `lepton predict` and the
`lepton serving status|rollout` commands): channel with optional TLS, bearer token metadata,
JSON records to protobuf and predictions back to plain dicts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from services.serving.gen import serving_pb2 as pb
from services.serving.gen import serving_pb2_grpc
from shared.events import Scalar

ROUTES = {pb.ROUTE_LIVE: "live", pb.ROUTE_CANARY: "canary", pb.ROUTE_PINNED: "pinned"}
MODES = {pb.CANDIDATE_MODE_CANARY: "canary", pb.CANDIDATE_MODE_SHADOW: "shadow"}
ACTIONS = {"promote": pb.ROLLOUT_ACTION_PROMOTE, "canary": pb.ROLLOUT_ACTION_CANARY,
           "shadow": pb.ROLLOUT_ACTION_SHADOW, "rollback": pb.ROLLOUT_ACTION_ROLLBACK,
           "clear": pb.ROLLOUT_ACTION_CLEAR}


def target(addr: str) -> str:
    """A dialable address for a listen address (0.0.0.0 / [::] become loopback)."""
    host, _, port = addr.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):  # noqa: S104
        host = "127.0.0.1"
    return f"{host}:{port}"


def open_channel(addr: str, *, tls_ca: Path | None = None,
                 max_message_bytes: int = 4 * 1024 * 1024) -> grpc.Channel:
    """A channel to `addr`, TLS-verified against `tls_ca` when given."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    if tls_ca is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes())
        return grpc.secure_channel(target(addr), credentials, options=options)
    return grpc.insecure_channel(target(addr), options=options)


def auth_metadata(token: str | None) -> list[tuple[str, str]]:
    """The `authorization` metadata for `token` (none when no token)."""
    return [("authorization", f"Bearer {token}")] if token else []


def struct_value(value: Scalar) -> struct_pb2.Value:
    """A protobuf Value for one JSON scalar."""
    message = struct_pb2.Value()
    if value is None:
        message.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        message.bool_value = value
    elif isinstance(value, int | float):
        message.number_value = float(value)
    elif isinstance(value, str):
        message.string_value = value
    else:
        raise ValueError(f"a feature value must be a string, number, boolean or null, "
                         f"not {type(value).__name__}")
    return message


def predict_request(record: dict[str, Scalar], *, model: str = "", version: int = 0,
                    request_id: str = "", explain: bool = False) -> Any:
    """A PredictRequest message for a JSON record."""
    return pb.PredictRequest(request_id=request_id, model=model, version=version,
                             features={k: struct_value(v) for k, v in record.items()},
                             explain=explain)


def response_dict(response: Any) -> dict[str, Any]:
    """A PredictResponse as a plain dict (with `explanation` when the server sent one)."""
    out = {"request_id": response.request_id, "model": response.model,
           "version": response.version, "score": response.score, "label": response.label,
           "route": ROUTES.get(response.route, "unspecified")}
    if response.HasField("explanation"):
        e = response.explanation
        out["explanation"] = {"model": response.model, "version": e.version,
                              "method": e.method, "baseline": e.baseline, "logit": e.logit,
                              "baseline_logit": e.baseline_logit,
                              "attributions": dict(e.attributions)}
    return out


def status_dict(status: Any) -> dict[str, Any]:
    """A ModelStatus as a plain dict."""
    return {"model": status.model, "live_version": status.live_version,
            "previous_version": status.previous_version or None,
            "candidate_version": status.candidate_version or None,
            "candidate_mode": MODES.get(status.candidate_mode),
            "canary_share": status.canary_share,
            "loaded_versions": list(status.loaded_versions)}


class ServingClient:
    """Blocking calls to one serving endpoint."""

    def __init__(self, addr: str, *, token: str | None = None, tls_ca: Path | None = None,
                 timeout: float = 10.0) -> None:
        self.channel = open_channel(addr, tls_ca=tls_ca)
        self.stub = serving_pb2_grpc.PredictionServiceStub(self.channel)
        self.metadata = auth_metadata(token)
        self.timeout = timeout

    def predict(self, records: Sequence[dict[str, Scalar]], *, model: str = "",
                version: int = 0, request_id: str = "",
                explain: bool = False) -> list[dict[str, Any]]:
        """Predict one record (Predict) or many (PredictBatch)."""
        requests = [predict_request(r, model=model, version=version,
                                    request_id=request_id if len(records) == 1 else
                                    (f"{request_id}-{i}" if request_id else ""),
                                    explain=explain)
                    for i, r in enumerate(records)]
        if len(requests) == 1:
            return [response_dict(self.stub.Predict(requests[0], timeout=self.timeout,
                                                    metadata=self.metadata))]
        reply = self.stub.PredictBatch(pb.PredictBatchRequest(requests=requests),
                                       timeout=self.timeout, metadata=self.metadata)
        return [response_dict(r) for r in reply.responses]

    def list_models(self) -> list[dict[str, Any]]:
        """Every hosted model's rollout."""
        reply = self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout,
                                     metadata=self.metadata)
        return [status_dict(s) for s in reply.models]

    def rollout(self, action: str, model: str, version: int = 0,
                share: float = 0.0) -> dict[str, Any]:
        """Change a model's rollout; returns its new status."""
        reply = self.stub.SetRollout(
            pb.SetRolloutRequest(model=model, action=ACTIONS[action], version=version,
                                 share=share), timeout=self.timeout, metadata=self.metadata)
        return status_dict(reply)

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()
