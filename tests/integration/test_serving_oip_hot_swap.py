"""Hot-swap under load on the OIP v2 paths: tritonclient gRPC ModelInfer (batches) and HTTP
v2 infer keep answering through 20 swaps with no failed request, every answer naming a version
that was live while it was in flight."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from shared.config import LeptonSettings
from shared.models.registry import Registry
from tests.integration.test_serving_http import v2_body
from tests.integration.test_serving_oip_grpc import HEADERS, full_records, v2_inputs
from tests.unit.serving.support import (
    MODEL,
    TOKEN,
    announce,
    running,
    save_model,
    serving_settings,
    wait_for,
)

SWAPS = 20


def _live(server: Any) -> int:
    return int(server.app.fleet.hosts[MODEL].rollout.live.version)


def test_twenty_swaps_under_v2_load_fail_no_request(lepton_env: LeptonSettings) -> None:
    settings = serving_settings(serving_auth_token=TOKEN)
    first = save_model(settings)
    cards = [save_model(settings, seed=i) for i in range(1, SWAPS + 1)]
    Registry(settings).set_live(MODEL, first.version)
    failures: list[str] = []
    answers: list[tuple[int, int, int]] = []
    stop = threading.Event()
    records = full_records(16)

    with running(settings) as server:
        meta = triton.InferenceServerClient(server.addr).get_model_metadata(
            MODEL, headers=HEADERS, as_json=True)

        def grpc_client() -> None:
            client = triton.InferenceServerClient(server.addr)
            inputs = v2_inputs(records, meta)
            while not stop.is_set():
                before = _live(server)
                try:
                    result = client.infer(MODEL, inputs, headers=HEADERS, client_timeout=10)
                except InferenceServerException as error:
                    failures.append(f"grpc {error.status()}: {error.message()}")
                    continue
                answers.append((before, int(result.get_response().model_version),
                                _live(server)))
            client.close()

        def http_client() -> None:
            body = v2_body(records[:4], meta)
            auth = {"authorization": f"Bearer {TOKEN}"}
            with httpx.Client(base_url=server.http_url, headers=auth, timeout=10) as http:
                while not stop.is_set():
                    before = _live(server)
                    try:
                        response = http.post(f"/v2/models/{MODEL}/infer", json=body)
                    except httpx.HTTPError as error:
                        failures.append(f"http {error!r}")
                        continue
                    if response.status_code != 200:
                        failures.append(f"http {response.status_code}: {response.text[:200]}")
                        continue
                    answers.append((before, int(response.json()["model_version"]),
                                    _live(server)))

        threads = [threading.Thread(target=grpc_client), threading.Thread(target=grpc_client),
                   threading.Thread(target=http_client), threading.Thread(target=http_client)]
        for thread in threads:
            thread.start()
        try:
            for card in cards:
                announce(settings, card)
                wait_for(lambda v=card.version: _live(server) == v, what=f"v{card.version} live")
                time.sleep(0.05)
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert server.app.fleet.swaps >= SWAPS + 1

    assert failures == []
    assert len(answers) > 100
    assert all(before <= version <= after for before, version, after in answers), \
        [a for a in answers if not a[0] <= a[1] <= a[2]][:5]
    assert len({version for _, version, _ in answers}) > SWAPS // 2
