"""The body of an HTTP v2 infer call: the JSON header (an InferRequest) and its tensors, typed
JSON `data` or the binary tensor extension (raw bytes after the JSON, sized by
`Inference-Header-Content-Length` and each input's `binary_data_size`), decoded into
`oip.Tensor`s; and the JSON response document of one answer."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from services.serving import oip
from services.serving.errors import InvalidInput
from services.serving.http_models import InferRequest


def decode_infer(headers: Any, raw: bytes) -> tuple[InferRequest, list[oip.Tensor]]:
    """The JSON header and tensors of a v2 infer body (binary extension included)."""
    size = headers.get("inference-header-content-length")
    if size is not None and (not size.isdigit() or int(size) > len(raw)):
        raise InvalidInput("Inference-Header-Content-Length does not fit the body")
    head, binary = (raw[:int(size)], raw[int(size):]) if size is not None else (raw, b"")
    try:
        body = InferRequest.model_validate_json(head)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInput(f"invalid infer request: {where}: {first.get('msg')}") from None
    tensors, at = [], 0
    for item in body.inputs:
        params = item.parameters or {}
        if "binary_data_size" in params:
            length = params["binary_data_size"]
            if not isinstance(length, int) or length < 0 or at + length > len(binary):
                raise InvalidInput(f"input {item.name!r}: binary_data_size does not fit the body")
            values = oip.decode_raw(item.name, item.datatype, binary[at:at + length])
            at += length
        elif item.data is None:
            raise InvalidInput(f"input {item.name!r} has no data")
        else:
            values = oip.typed_values(item.name, item.datatype, _flatten(item.data))
        tensors.append(oip.Tensor(item.name, item.datatype, tuple(item.shape), values))
    return body, tensors


def _flatten(data: list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in data:
        if isinstance(value, list):
            out.extend(_flatten(value))
        else:
            out.append(value)
    return out


def infer_response(body: InferRequest, answer: oip.Answer) -> dict[str, Any]:
    """The v2 infer response document of `answer` (only the outputs the body asks for)."""
    rows = answer.rows
    n = len(rows.predictions)
    outputs = [{"name": "score", "datatype": "FP64", "shape": [n],
                "data": [p.score for p in rows.predictions]},
               {"name": "label", "datatype": "BOOL", "shape": [n],
                "data": [p.label for p in rows.predictions]}]
    parameters = answer.parameters()
    if answer.explanations:
        fields = len(answer.explanations[0].attributions)
        outputs.append({"name": "attributions", "datatype": "FP64", "shape": [n, fields],
                        "data": [v for e in answer.explanations
                                 for v in e.attributions.values()]})
        parameters["baseline_logit"] = answer.explanations[0].baseline_logit
    wanted = [o.name for o in body.outputs or []]
    unknown = [w for w in wanted if w not in {o["name"] for o in outputs}]
    if unknown:
        raise InvalidInput(f"unknown output {unknown[0][:100]!r}")
    return {"model_name": rows.model.name, "model_version": str(answer.version),
            "id": body.id or "", "parameters": parameters,
            "outputs": [o for o in outputs if not wanted or o["name"] in wanted]}
