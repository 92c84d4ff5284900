"""Request bodies of the HTTP API as pydantic models (they also make the OpenAPI document):
the v2 infer request (JSON tensors, optionally with binary data after the JSON header) and the
`/v1/models/{name}:predict` body (one record, a list of records, or {"instances": [...]})."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from services.serving.errors import InvalidInput
from shared.events import Scalar

MAX_RECORDS = 4096
Record = dict[str, Scalar]


class InferInput(BaseModel):
    """One v2 input tensor: flat or nested `data`, or `binary_data_size` in parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    shape: list[int] = Field(max_length=8)
    datatype: str = Field(max_length=20)
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class RequestedOutput(BaseModel):
    """An output the caller wants (score, label, attributions)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=200)
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """A v2 inference request; `parameters.explain = true` adds attributions."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(default=None, max_length=200)
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=512)
    outputs: list[RequestedOutput] | None = None


class Instances(BaseModel):
    """KServe v1 style: {"instances": [record, ...]}."""

    model_config = ConfigDict(extra="forbid")

    instances: list[Record] = Field(min_length=1, max_length=MAX_RECORDS)


def _shape(body: Any) -> str:
    """Which of the predict body's forms `body` takes (its errors then speak of that one)."""
    if isinstance(body, list):
        return "records"
    if isinstance(body, dict) and "instances" in body:
        return "instances"
    return "record"


PredictBody = Annotated[Annotated[Instances, Tag("instances")]
                        | Annotated[list[Record], Tag("records")]
                        | Annotated[Record, Tag("record")], Discriminator(_shape)]
_SCALAR_TAGS = {"str", "int", "float", "bool"}


def predict_body_error(loc: Sequence[str | int], message: str, kind: str) -> str:
    """A validation error of the predict body (`loc` after "body"), in the body's own terms."""
    if not loc or (tuple(loc) == ("record",) and kind == "dict_type"):  # none, or no object
        return ('the body must be a record (a JSON object of field values), a list of '
                'records, or {"instances": [records]}')
    form, *path = loc
    if form == "instances" and path[:1] == ["instances"]:
        path = path[1:]
    if path and path[-1] in _SCALAR_TAGS:  # every member of Scalar refused the value
        path, message = path[:-1], "a value must be a string, number, boolean or null"
    elif kind == "dict_type":
        message = "a record must be a JSON object of field values"
    elif kind == "extra_forbidden":
        return f'{{"instances": [...]}} takes no other key than "instances" (got {path[-1]!r})'
    where = str(form) + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return f"{where}: {message}"


def records_of(body: PredictBody) -> list[Record]:
    """The records of a predict body."""
    if isinstance(body, Instances):
        return body.instances
    if isinstance(body, list):
        if not body:
            raise InvalidInput("no records given")
        if len(body) > MAX_RECORDS:
            raise InvalidInput(f"{len(body)} records, over the limit of {MAX_RECORDS}")
        return body
    return [body]
