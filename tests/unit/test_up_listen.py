"""Where `lepton up` has serving and the metrics endpoints listen: loopback by default, the
`--host` given otherwise, and never over an address the operator set."""

from __future__ import annotations

from lepton.up import listen_env


def test_lepton_up_listens_on_loopback_unless_told_where() -> None:
    assert listen_env({}, "127.0.0.1") == {
        "LEPTON_METRICS_HOST": "127.0.0.1", "LEPTON_SERVING_ADDR": "127.0.0.1:50051",
        "LEPTON_SERVING_HTTP_ADDR": "127.0.0.1:8080"}
    assert listen_env({}, "::1")["LEPTON_SERVING_ADDR"] == "[::1]:50051"


def test_addresses_the_operator_set_win() -> None:
    chosen = {"LEPTON_SERVING_ADDR": "0.0.0.0:7000", "LEPTON_SERVING_HTTP_ADDR": ""}
    assert listen_env(chosen, "127.0.0.1") == {"LEPTON_METRICS_HOST": "127.0.0.1"}
