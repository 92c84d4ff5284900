"""Errors a prediction can end in, each with its gRPC status and Kafka error code."""

from __future__ import annotations

from typing import Literal

import grpc

ErrorCode = Literal["invalid_argument", "not_found", "unavailable", "failed_precondition"]


class ServingError(Exception):
    """A request that cannot be served; `status` and `code` say how to report it."""

    status = grpc.StatusCode.INTERNAL
    code: ErrorCode = "unavailable"


class InvalidInput(ServingError):
    """The request itself is wrong (unknown field, bad type, out of range, ...)."""

    status = grpc.StatusCode.INVALID_ARGUMENT
    code = "invalid_argument"


class ModelNotFound(ServingError):
    """The named model or pinned version is not hosted or not in the registry."""

    status = grpc.StatusCode.NOT_FOUND
    code = "not_found"


class NotReady(ServingError):
    """No model is ready to answer yet."""

    status = grpc.StatusCode.UNAVAILABLE
    code = "unavailable"


class Refused(ServingError):
    """A model version exists but failed verification or warm-up, so it is never served."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    code = "failed_precondition"


class Overloaded(ServingError):
    """Serving declines work that would cost a model load now (pinned-load budget spent)."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    code = "unavailable"
