"""Who may call what: a predict credential and a distinct admin credential (bearer tokens,
`authorization: Bearer <token>`, compared in constant time), shared by the gRPC interceptor here
and any other front end (HTTP, OIP v2) through `Credentials.check`.

Prediction and read-only calls need the predict token (the admin token is accepted too: admin
rights include predicting); admin calls (`ADMIN_METHODS`, e.g. SetRollout) need the admin token
— the predict token gets PERMISSION_DENIED, none or a wrong one UNAUTHENTICATED. Health checks
and reflection stay open. Auth is off only with an explicit `LEPTON_SERVING_AUTH=none`; an
empty or missing token otherwise is a configuration error (exit 78).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import grpc

from shared.config import ConfigError

if TYPE_CHECKING:
    from services.serving.config import ServingSettings

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
ADMIN_METHODS = frozenset({"/lepton.serving.v1.PredictionService/SetRollout"})


class AuthResult(StrEnum):
    """The outcome of checking a call's credential."""

    OK = "ok"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"


@dataclass(frozen=True, slots=True)
class Credentials:
    """The expected `authorization` values (None for both when auth is off)."""

    predict: bytes | None
    admin: bytes | None

    @property
    def enabled(self) -> bool:
        """Whether calls must carry a token."""
        return self.predict is not None

    @classmethod
    def from_settings(cls, settings: ServingSettings) -> Credentials:
        """The credentials configured; ConfigError (exit 78) for a missing or empty token, or
        the two tokens being equal. `LEPTON_SERVING_AUTH=none` turns auth off, with a warning."""
        if settings.serving_auth == "none":
            log.warning("LEPTON_SERVING_AUTH=none: the API, admin calls included, is open to "
                        "any caller")
            return cls(None, None)
        predict, admin = settings.predict_token(), settings.admin_token()
        for name, value in (("LEPTON_SERVING_AUTH_TOKEN", predict),
                            ("LEPTON_SERVING_ADMIN_TOKEN", admin)):
            if not value:
                raise ConfigError(f"{name} is not set or empty (set it, or its _FILE, or "
                                  "LEPTON_SERVING_AUTH=none to run without auth)")
        if predict == admin:
            raise ConfigError("LEPTON_SERVING_ADMIN_TOKEN must differ from "
                              "LEPTON_SERVING_AUTH_TOKEN")
        return cls(f"Bearer {predict}".encode(), f"Bearer {admin}".encode())

    def check(self, authorization: str | bytes | None, *, admin: bool) -> AuthResult:
        """Check an `authorization` value for a predict (or, with `admin`, an admin) call."""
        if self.predict is None or self.admin is None:
            return AuthResult.OK
        if authorization is None:
            return AuthResult.UNAUTHENTICATED
        supplied = authorization.encode() if isinstance(authorization, str) else authorization
        is_admin = hmac.compare_digest(supplied, self.admin)
        is_predict = hmac.compare_digest(supplied, self.predict)
        if is_admin or (is_predict and not admin):
            return AuthResult.OK
        return AuthResult.PERMISSION_DENIED if is_predict else AuthResult.UNAUTHENTICATED


def _deny(code: grpc.StatusCode, message: str) -> Callable[..., Awaitable[None]]:
    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, message)

    return abort


def _denied_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
                    message: str) -> grpc.RpcMethodHandler:
    deny = _deny(code, message)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class TokenAuth(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answers calls without the right credential with UNAUTHENTICATED or PERMISSION_DENIED."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Pass authorised (or open) calls on; deny the rest."""
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        supplied = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                supplied = value
                break
        result = self.credentials.check(supplied, admin=details.method in ADMIN_METHODS)
        if result is AuthResult.OK:
            return handler
        if result is AuthResult.PERMISSION_DENIED:
            return _denied_handler(handler, grpc.StatusCode.PERMISSION_DENIED,
                                   "this call needs the admin credential")
        if supplied is None:
            return _denied_handler(handler, grpc.StatusCode.UNAUTHENTICATED,
                                   "missing authorization metadata "
                                   "(expected 'authorization: Bearer <token>')")
        return _denied_handler(handler, grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
