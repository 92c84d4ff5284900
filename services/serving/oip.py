"""The Open Inference Protocol v2, independent of transport: a model's v2 metadata (one input
tensor per raw feature, outputs `score` FP64 and `label` BOOL, optional `attributions`),
decoding columnar input tensors (typed or raw little-endian bytes) into records, and the answer
of one ModelInfer. Used by the gRPC servicer (oip_grpc.py) and the HTTP API (http_api.py);
scoring itself is the Predictor's."""

from __future__ import annotations

import asyncio
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from services.serving.errors import InvalidInput
from services.serving.explain import Explanation, explain
from shared.datasets import FieldType

if TYPE_CHECKING:
    from services.serving.fleet import Fleet
    from services.serving.model import LoadedModel
    from services.serving.predictor import Call, Predictor, Rows
    from shared.events import Scalar

SERVER_NAME = "lepton-serving"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("parameters", "binary_tensor_data", "lepton_explain")
PLATFORM = "lepton_pytorch"
DATATYPES = {FieldType.INT: "INT64", FieldType.FLOAT: "FP64", FieldType.BOOL: "BOOL",
             FieldType.CATEGORY: "BYTES", FieldType.STRING: "BYTES",
             FieldType.TIMESTAMP: "BYTES"}
_RAW = {"FP64": "d", "FP32": "f", "INT64": "q", "INT32": "i", "INT16": "h", "INT8": "b",
        "UINT64": "Q", "UINT32": "I", "UINT16": "H", "UINT8": "B", "BOOL": "?"}
_WIDTH = {code: struct.calcsize(code) for code in _RAW.values()}
_NUMPY = {code: np.dtype(f"<{code}") if code != "?" else np.dtype("?") for code in _RAW.values()}
NUMERIC = frozenset(_RAW) - {"BOOL"}
_INTEGERS = frozenset(d for d in NUMERIC if d.startswith(("INT", "UINT")))
_TEXT = (bytes, str)
MAX_ROWS = 65536


class Tensor(NamedTuple):
    """One decoded input tensor: its name, datatype, shape and flat Python values."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: list[Scalar]


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one v2 infer: scored rows, and their explanations when asked."""

    rows: Rows
    explanations: list[Explanation] | None

    @property
    def version(self) -> int:
        """The version that produced every row."""
        return self.rows.model.version

    def parameters(self) -> dict[str, Scalar]:
        """v2 response parameters: the version, route and variant that answered (and how
        explained)."""
        params: dict[str, Scalar] = {"lepton_version": self.version,
                                     "lepton_route": self.rows.route.value,
                                     "lepton_variant": self.rows.model.variant}
        if self.explanations:
            first = self.explanations[0]
            params.update(explain_method=first.method, explain_baseline=first.baseline,
                          explain_features=",".join(first.attributions))
        return params


def parse_version(text: str) -> int:
    """A v2 version string as an int (empty: 0, the rollout chooses)."""
    if not text:
        return 0
    if not text.isdigit() or int(text) < 1 or int(text) > 2**31:
        raise InvalidInput(f"model version must be a positive integer, got {text[:20]!r}")
    return int(text)


def input_datatypes(model: LoadedModel) -> list[tuple[str, str]]:
    """(name, v2 datatype) of every raw feature the model reads."""
    spec = {f.name: f for f in model.schema.spec.fields}
    out = []
    for column in model.transform.columns:
        item = spec.get(column.name)
        out.append((column.name, DATATYPES[item.type] if item else "BYTES"))
    return out


def metadata(fleet: Fleet, model: LoadedModel) -> dict[str, Any]:
    """The v2 model metadata document of one loaded version."""
    versions = sorted({m.version for m in fleet.host(model.name).loaded()} | {model.version})
    return {
        "name": model.name, "versions": [str(v) for v in versions], "platform": PLATFORM,
        "inputs": [{"name": n, "datatype": d, "shape": [-1]} for n, d in input_datatypes(model)],
        "outputs": [{"name": "score", "datatype": "FP64", "shape": [-1]},
                    {"name": "label", "datatype": "BOOL", "shape": [-1]},
                    {"name": "attributions", "datatype": "FP64", "shape": [-1, -1]}],
        "parameters": {"lepton_variant": model.variant},
    }


def decode_raw(name: str, datatype: str, raw: bytes) -> list[Scalar]:
    """Flat values of a raw (binary) tensor: little-endian elements, BYTES length-prefixed."""
    if datatype == "BYTES":
        texts: list[Scalar] = []
        at = 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise InvalidInput(f"input {name!r}: truncated BYTES element")
            (size,) = struct.unpack_from("<I", raw, at)
            at += 4
            if at + size > len(raw):
                raise InvalidInput(f"input {name!r}: truncated BYTES element")
            texts.append(_text(name, raw[at:at + size]))
            at += size
        return texts
    code = _RAW.get(datatype)
    if code is None:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype[:20]!r}")
    count, rest = divmod(len(raw), _WIDTH[code])
    if rest:
        raise InvalidInput(f"input {name!r}: {len(raw)} bytes is not a whole number of "
                           f"{datatype} elements")
    values: list[Scalar] = list(_unpacker(code, count)(raw)) if count <= 256 else \
        np.frombuffer(raw, _NUMPY[code]).tolist()
    if code in "df" and not all(map(math.isfinite, values)):  # type: ignore[arg-type]
        raise InvalidInput(f"input {name!r}: FP tensors must hold finite numbers")
    return values


@lru_cache(maxsize=512)
def _unpacker(code: str, count: int) -> Any:
    return struct.Struct(f"<{count}{code}").unpack


def _text(name: str, value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"input {name!r}: BYTES elements must be UTF-8 text") from None


def typed_values(name: str, datatype: str, values: list[Any]) -> list[Scalar]:
    """Flat values given as a JSON list or typed protobuf contents, checked against datatype."""
    if datatype == "BYTES":
        return [_text(name, v) if isinstance(v, _TEXT) else _bad(name, datatype)
                for v in values]
    if datatype == "BOOL":
        return [v if isinstance(v, bool) else _bad(name, datatype) for v in values]
    if datatype not in NUMERIC:
        raise InvalidInput(f"input {name!r}: unsupported datatype {datatype[:20]!r}")
    integer = datatype in _INTEGERS
    out: list[Scalar] = []
    for v in values:  # JSON and protobuf give exact ints and floats (bool is not a number)
        kind = v.__class__
        if kind is float:
            if integer and not v.is_integer():
                _bad(name, datatype)
            out.append(int(v) if integer else v)
        elif kind is int:
            out.append(v if integer else float(v))
        else:
            _bad(name, datatype)
    if not integer and not all(map(math.isfinite, out)):  # type: ignore[arg-type]
        raise InvalidInput("FP tensors must hold finite numbers")
    return out


def _bad(name: str, datatype: str) -> Any:
    raise InvalidInput(f"input {name!r}: data does not match datatype {datatype}")


def to_records(tensors: list[Tensor]) -> list[dict[str, Scalar]]:
    """Columnar tensors ([N] or [N, 1], one per field, equal N) as N records."""
    if not tensors:
        raise InvalidInput("the request has no input tensors")
    rows: int | None = None
    seen: set[str] = set()
    for tensor in tensors:
        if tensor.name in seen:
            raise InvalidInput(f"input {tensor.name[:100]!r} is given twice")
        seen.add(tensor.name)
        shape = tensor.shape
        if not 1 <= len(shape) <= 2 or (len(shape) == 2 and shape[1] != 1) or shape[0] < 0:
            raise InvalidInput(f"input {tensor.name[:100]!r}: shape must be [N] or [N, 1], "
                               f"got {list(shape)[:4]}")
        if len(tensor.values) != shape[0]:
            raise InvalidInput(f"input {tensor.name[:100]!r}: shape {list(shape)} needs "
                               f"{shape[0]} elements, got {len(tensor.values)}")
        if rows is not None and shape[0] != rows:
            raise InvalidInput(f"input {tensor.name[:100]!r} has {shape[0]} rows, others "
                               f"have {rows}")
        rows = shape[0]
    if not rows:
        raise InvalidInput("the request has no rows")
    if rows > MAX_ROWS:
        raise InvalidInput(f"the request has {rows} rows, over the limit of {MAX_ROWS}")
    columns = [(t.name, t.values) for t in tensors]
    return [{name: values[i] for name, values in columns} for i in range(rows)]


def flag(value: Scalar | None) -> bool:
    """A v2 boolean parameter (bool, 0/1 or 'true'/'false')."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


async def infer(predictor: Predictor, model_name: str, version: str, request_id: str,
                tensors: list[Tensor], *, explain_rows: bool, call: Call) -> Answer:
    """Score the rows of one v2 request with one version; explain them when asked."""
    records = to_records(tensors)
    rows = await predictor.predict_rows(request_id, model_name, parse_version(version),
                                        records, call)
    explanations = await asyncio.to_thread(explain, rows.model, rows.records) \
        if explain_rows else None
    return Answer(rows, explanations)


def model_for(fleet: Fleet, name: str, version: str) -> LoadedModel:
    """The loaded version that would answer `name` (pinned when `version` is set)."""
    host = fleet.host(name)
    pin = parse_version(version)
    if pin:
        return fleet.load_pinned(host.name, pin)
    model, _, _ = host.choose("", None)
    return model
