"""The HTTP API over a real socket: every endpoint with httpx (auth failures, bad bodies, JSON
errors), tritonclient.http against it (no project stubs), scores equal to the lepton gRPC API,
W3C trace context from headers, and the OpenAPI document."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http

from shared.config import LeptonSettings
from shared.models.registry import Registry
from tests.integration.test_serving_oip_grpc import NUMPY, full_records
from tests.unit.serving.support import (
    ADMIN_TOKEN,
    MODEL,
    TOKEN,
    call_predict,
    record,
    running,
    save_model,
    serving_settings,
    span_exporter,
    stub,
)

AUTH = {"authorization": f"Bearer {TOKEN}"}  # pass copies: tritonclient.http adds to it


@pytest.fixture
def served(lepton_env: LeptonSettings) -> Any:
    """A server with v1 and v2 (v2 live), auth on; yields (server, v1 card, v2 card)."""
    settings = serving_settings(serving_auth_token=TOKEN)
    first = save_model(settings, seed=1)
    second = save_model(settings, seed=2)
    Registry(settings).set_live(MODEL, second.version)
    with running(settings) as server:
        yield server, first, second


def v2_body(records: list[dict[str, Any]], meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A JSON v2 infer request over `records`."""
    inputs = [{"name": i["name"], "datatype": i["datatype"], "shape": [len(records)],
               "data": [r[i["name"]] for r in records]} for i in meta["inputs"]]
    return {"inputs": inputs, **extra}


def test_health_metadata_and_openapi(served: Any) -> None:
    server, first, live = served
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.get("/v2/health/live").json() == {"live": True}
        assert http.get("/v2/health/ready").status_code == 200
        assert http.get("/v2", headers=dict(AUTH)).json()["name"] == "lepton-serving"
        meta = http.get(f"/v2/models/{MODEL}", headers=dict(AUTH)).json()
        assert meta["name"] == MODEL and str(live.version) in meta["versions"]
        assert {o["name"] for o in meta["outputs"]} >= {"score", "label"}
        pinned = http.get(f"/v2/models/{MODEL}/versions/{first.version}", headers=dict(AUTH))
        assert pinned.status_code == 200
        assert http.get(f"/v2/models/{MODEL}/ready", headers=dict(AUTH)).status_code == 200
        assert http.get(f"/v2/models/{MODEL}/versions/{first.version}/ready",
                        headers=dict(AUTH)).status_code == 200
        missing = http.get("/v2/models/nope", headers=dict(AUTH))
        assert missing.status_code == 404 and "nope" in missing.json()["error"]
        assert http.get(f"/v2/models/{MODEL}/versions/99", headers=dict(AUTH)).status_code == 404
        assert http.get("/v2/models/nope/ready", headers=dict(AUTH)).status_code == 404
        doc = http.get("/openapi.json").json()
        assert "/v2/models/{name}/infer" in doc["paths"]
        assert "/v1/models/{name}:predict" in doc["paths"]
        assert "InferRequest" in doc["components"]["schemas"]


def test_auth_failures_are_401_with_a_json_error(served: Any) -> None:
    server, _, _ = served
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        for method, path in (("GET", f"/v2/models/{MODEL}"), ("POST", f"/v2/models/{MODEL}/infer"),
                             ("POST", f"/v1/models/{MODEL}:predict"), ("GET", "/v2")):
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
                response = http.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers)
                assert response.json()["error"]
                assert response.headers["www-authenticate"] == "Bearer"
        admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}  # admin rights include predicting
        assert http.get(f"/v2/models/{MODEL}", headers=admin).status_code == 200


def test_v2_infer_json_matches_grpc_and_bad_bodies_are_400(served: Any) -> None:
    server, first, live = served
    records = full_records(20)
    with httpx.Client(base_url=server.http_url, headers=AUTH, timeout=10) as http:
        meta = http.get(f"/v2/models/{MODEL}").json()
        answer = http.post(f"/v2/models/{MODEL}/infer", json=v2_body(records, meta, id="h1"))
        assert answer.status_code == 200, answer.text
        doc = answer.json()
        assert doc["model_version"] == str(live.version) and doc["id"] == "h1"
        assert doc["parameters"]["lepton_version"] == live.version
        scores = np.array(next(o for o in doc["outputs"] if o["name"] == "score")["data"])
        pinned = http.post(f"/v2/models/{MODEL}/versions/{first.version}/infer",
                           json=v2_body(records[:2], meta)).json()
        assert pinned["model_version"] == str(first.version)

        bad = {
            "not json": b"{nope",
            "no inputs": b'{"inputs": []}',
            "wrong shape": v2_body(records, meta) | {"inputs": [
                {"name": "amount", "datatype": "FP64", "shape": [3], "data": [1.0]}]},
            "wrong type": {"inputs": [{"name": "amount", "datatype": "FP64", "shape": [1],
                                       "data": ["x"]}]},
            "unknown field": {"inputs": [{"name": "nope", "datatype": "FP64", "shape": [1],
                                          "data": [1.0]}]},
            "unknown output": v2_body(records, meta, outputs=[{"name": "nope"}]),
        }
        for what, body in bad.items():
            response = http.post(f"/v2/models/{MODEL}/infer", content=body) \
                if isinstance(body, bytes) else http.post(f"/v2/models/{MODEL}/infer", json=body)
            assert response.status_code == 400, (what, response.text)
            assert response.json()["error"], what
        assert http.post("/v2/models/nope/infer", json=v2_body(records, meta)).status_code == 404
        huge = http.post(f"/v2/models/{MODEL}/infer", content=b" " * (4 * 1024 * 1024 + 1))
        assert huge.status_code == 413 and huge.json()["error"]
    channel, lepton = stub(server.addr)
    try:
        kinds = {i["name"] for i in meta["inputs"]}
        expected = [call_predict(lepton, {k: v for k, v in r.items() if k in kinds}).score
                    for r in records]
    finally:
        channel.close()
    assert np.max(np.abs(scores - np.array(expected))) <= 1e-6


def test_v1_predict_takes_records_like_lepton_predict(served: Any) -> None:
    server, first, live = served
    with httpx.Client(base_url=server.http_url, headers=AUTH, timeout=10) as http:
        one = http.post(f"/v1/models/{MODEL}:predict", json=record(0))
        assert one.status_code == 200, one.text
        [prediction] = one.json()["predictions"]
        assert prediction["version"] == live.version and 0 <= prediction["score"] <= 1
        many = http.post(f"/v1/models/{MODEL}:predict", json=[record(1), record(2)])
        assert len(many.json()["predictions"]) == 2
        instances = http.post(f"/v1/models/{MODEL}:predict?version={first.version}",
                              json={"instances": [record(3)]})
        assert instances.json()["predictions"][0]["version"] == first.version
        bad = http.post(f"/v1/models/{MODEL}:predict", json={"amount": "lots"})
        assert bad.status_code == 400 and "amount" in bad.json()["error"]
        assert "lots" not in bad.json()["error"]
        assert http.post(f"/v1/models/{MODEL}:predict", content=b"[1, 2]",
                         headers={"content-type": "application/json"}).status_code == 400
        broken = http.post(f"/v1/models/{MODEL}:predict", content=b"{bad",
                           headers={"content-type": "application/json"})
        assert broken.status_code == 400
        assert broken.json()["error"].startswith("invalid request: the body is not valid JSON")
        untyped = http.post(f"/v1/models/{MODEL}:predict", content=orjson.dumps(record(0)))
        assert untyped.status_code == 415 and "Content-Type: application/json" in \
            untyped.json()["error"]
        assert http.post(f"/v1/models/{MODEL}:predict", json=[]).status_code == 400
        for body in (record(0), [record(0), record(1)]):
            absent = http.post("/v1/models/nope:predict", json=body)
            assert (absent.status_code, absent.json()) == (  # the request's error, not a record's
                404, {"error": "model 'nope' is not hosted here"})
        bad_row = http.post(f"/v1/models/{MODEL}:predict",
                            json=[record(0), {**record(1), "amount": "abc"}])
        assert (bad_row.status_code, bad_row.json()) == (
            400, {"error": "records[1]: field 'amount' must be a number"})
        # a body of the wrong shape is named in the form it took, without pydantic's union tags
        for body, error in [
            ({"records": [record(0)]},
             "record.records: a value must be a string, number, boolean or null"),
            ([record(0), {**record(1), "amount": [1, 2]}],
             "records[1].amount: a value must be a string, number, boolean or null"),
            ({"instances": [{"amount": {"a": 1}}]},
             "instances[0].amount: a value must be a string, number, boolean or null"),
            ([1, 2], "records[0]: a record must be a JSON object of field values"),
            ("x", "the body must be a record (a JSON object of field values), a list of "
                  'records, or {"instances": [records]}'),
            ({"instances": [record(0)], "extra": 1},
             '{"instances": [...]} takes no other key than "instances" (got \'extra\')'),
            ({"instances": []}, "instances: List should have at least 1 item after "
                                "validation, not 0"),
        ]:
            answer = http.post(f"/v1/models/{MODEL}:predict", json=body)
            assert (answer.status_code, answer.json()) == (400, {
                "error": f"invalid request: {error}"}), body
        empty = http.post(f"/v1/models/{MODEL}:predict",
                          headers={"content-type": "application/json"})
        assert (empty.status_code, empty.json()["error"]) == (
            400, "invalid request: the body must be a record (a JSON object of field values), a "
                 'list of records, or {"instances": [records]}')


def test_http_continues_the_callers_trace(served: Any) -> None:
    server, _, _ = served
    exporter = span_exporter()
    exporter.clear()
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = AUTH | {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        assert http.post(f"/v1/models/{MODEL}:predict", json=record(0),
                         headers=headers).status_code == 200
    spans = [s for s in exporter.get_finished_spans() if s.name.endswith(":predict")]
    assert spans and f"{spans[0].context.trace_id:032x}" == trace_id


def test_tritonclient_http_against_the_server(served: Any) -> None:
    server, _, live = served
    client = triton_http.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL, headers=dict(AUTH))
    meta = client.get_model_metadata(MODEL, headers=dict(AUTH))
    records = full_records(100)
    inputs = []
    for spec in meta["inputs"]:
        column = [r[spec["name"]] for r in records]
        array = np.array([str(v).encode() for v in column], dtype=np.object_) \
            if spec["datatype"] == "BYTES" else np.array(column, dtype=NUMPY[spec["datatype"]])
        item = triton_http.InferInput(spec["name"], [len(records)], spec["datatype"])
        item.set_data_from_numpy(array)  # binary tensor extension (tritonclient's default)
        inputs.append(item)
    result = client.infer(MODEL, inputs, headers=dict(AUTH))
    assert result.get_response()["model_version"] == str(live.version)
    scores = result.as_numpy("score")
    channel, lepton = stub(server.addr)
    try:
        kinds = {i["name"] for i in meta["inputs"]}
        expected = [call_predict(lepton, {k: v for k, v in r.items() if k in kinds}).score
                    for r in records]
    finally:
        channel.close()
    assert scores.shape == (100,)
    assert np.max(np.abs(scores - np.array(expected))) <= 1e-6


def test_explanations_over_http_name_the_version_and_add_up(served: Any) -> None:
    server, first, live = served
    records = full_records(4)
    with httpx.Client(base_url=server.http_url, headers=AUTH, timeout=30) as http:
        plain = http.post(f"/v1/models/{MODEL}:predict", json=records[0]).json()
        assert "explanation" not in plain["predictions"][0]
        for version in (0, first.version):
            doc = http.post(f"/v1/models/{MODEL}:predict?explain=true&version={version}",
                            json=records).json()
            for out in doc["predictions"]:
                reason = out["explanation"]
                assert reason["version"] == out["version"] == (version or live.version)
                total = sum(reason["attributions"].values())
                assert abs(total - (reason["logit"] - reason["baseline_logit"])) <= 1e-4
                score = out["score"]
                assert abs(reason["logit"] - float(np.log(score / (1 - score)))) <= 1e-4
        meta = http.get(f"/v2/models/{MODEL}").json()
        doc = http.post(f"/v2/models/{MODEL}/infer",
                        json=v2_body(records, meta, parameters={"explain": True})).json()
        attributions = next(o for o in doc["outputs"] if o["name"] == "attributions")
        assert attributions["shape"] == [4, len(doc["parameters"]["explain_features"].split(","))]
        assert doc["parameters"]["lepton_version"] == live.version


def test_http_answers_without_a_nagle_delay(served: Any) -> None:
    """Accepted sockets must have TCP_NODELAY: with Nagle + delayed ACK every answer waits
    ~40 ms."""
    import statistics
    import time

    server, _, _ = served
    took = []
    with httpx.Client(base_url=server.http_url, timeout=10) as http:
        for _ in range(30):
            start = time.perf_counter()
            assert http.get("/v2/health/live").status_code == 200
            took.append(time.perf_counter() - start)
    assert statistics.median(took) < 0.02, statistics.median(took)
