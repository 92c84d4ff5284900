"""Sustainability accounting with real process meters and real Redis: the report adds up (the
per-stage joules sum to the total), an estimate is labelled as one when RAPL is absent, J per
prediction and gCO2e per model version follow from the records and the card, the target is
tracked, and `lepton sustainability report --json --plot` writes a PNG."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import psutil
import pytest
import redis

from services.monitor.config import MonitorSettings
from services.monitor.sustainability import render, sustainability_report
from shared.carbon import carbon_intensity
from shared.energy import ProcessEnergy
from shared.models.nets import architecture, build_model
from shared.models.registry import ModelCard, Registry
from shared.service_record import ServiceRecord, count_work
from tests.conftest import REDIS_URL
from tests.helpers import lepton


@pytest.fixture
def settings(redis_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
             ) -> MonitorSettings:
    for name, value in {"LEPTON_REDIS_URL": REDIS_URL, "LEPTON_REDIS_PREFIX": redis_prefix,
                        "LEPTON_DATA_DIR": str(tmp_path), "LEPTON_CARBON_G_PER_KWH": "250",
                        "LEPTON_MONITOR_ENERGY_BASELINE_J_PER_EVENT": "1000"}.items():
        monkeypatch.setenv(name, value)
    return MonitorSettings()


def _busy(seconds: float) -> None:
    process = psutil.Process()
    began = sum(process.cpu_times()[:2])
    while sum(process.cpu_times()[:2]) - began < seconds:
        sum(i * i for i in range(20_000))


def _run(service: str, settings: MonitorSettings, units: int, key: str = "") -> None:
    record = ServiceRecord(service, settings).start()
    try:
        _busy(0.05)
        count_work(units, 0.01, key)
    finally:
        record.close()


def test_the_report_adds_up_and_labels_estimates(settings: MonitorSettings,
                                                 redis_client: redis.Redis) -> None:
    card = Registry(settings).save(ModelCard(
        model="transactions", dataset="transactions", spec_hash="ab" * 32,
        architecture=architecture("logistic", 3), feature_transform={}, energy_j=36.0,
        joules_per_sample=0.01, status="promoted"),
        build_model(architecture("logistic", 3)).state_dict())
    _run("ingest", settings, 500)
    _run("governance", settings, 500)
    _run("serving", settings, 40, key=f"transactions:{card.version}")
    report = sustainability_report(redis_client, settings)
    stages = {s["service"]: s for s in report["stages"]}
    assert set(stages) == {"ingest", "governance", "serving"}
    assert sum(s["joules"] for s in report["stages"]) == pytest.approx(report["total_joules"])
    assert report["total_joules"] > 0
    assert report["joules_per_prediction"] == pytest.approx(stages["serving"]["joules"] / 40)
    (version,) = report["versions"]
    assert version["predictions"] == 40
    assert version["co2e_g"] == pytest.approx((36.0 + stages["serving"]["joules"]) / 3.6e6 * 250)
    assert report["carbon"] == {"g_per_kwh": 250.0, "region": None,
                                "source": "setting LEPTON_CARBON_G_PER_KWH"}
    target = report["target"]
    assert target["target"] == pytest.approx(800.0) and target["met"] is True
    if ProcessEnergy(10.0).is_estimate:  # no readable RAPL here: every figure says so
        assert all(s["estimate"] for s in report["stages"])
        assert all(s["methods"][0].startswith("estimate: CPU seconds x 10 W") for s in
                   report["stages"])
        assert "(estimate)" in render(report)
        # 50 ms of CPU at 10 W per core is at least 0.5 J per stage
        assert all(s["joules"] >= 0.5 for s in report["stages"])


def test_cli_writes_json_and_a_png(settings: MonitorSettings, tmp_path: Path) -> None:
    _run("ingest", settings, 100)
    plot = tmp_path / "energy.png"
    env = {k: v for k, v in os.environ.items() if k.startswith("LEPTON_")}
    shown = orjson.loads(lepton("sustainability", "report", "--json", "--plot", str(plot),
                                env=env).stdout)
    assert shown["stages"][0]["service"] == "ingest" and shown["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    nowhere = tmp_path / "missing" / "energy.png"
    refused = lepton("sustainability", "report", "--plot", str(nowhere), env=env, check=False)
    assert refused.returncode == 73  # EX_CANTCREAT, one line, no traceback
    assert refused.stderr == f"error: cannot write {nowhere}: No such file or directory\n"


def test_carbon_intensity_comes_from_the_region_or_a_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEPTON_CARBON_G_PER_KWH", "123")
    assert carbon_intensity(MonitorSettings()).g_per_kwh == 123.0
    monkeypatch.delenv("LEPTON_CARBON_G_PER_KWH")
    default = carbon_intensity(MonitorSettings())
    assert default.source.startswith("default: world average")
    pytest.importorskip("codecarbon")
    monkeypatch.setenv("LEPTON_CARBON_REGION", "FRA")
    france = carbon_intensity(MonitorSettings())
    assert france.g_per_kwh < default.g_per_kwh and "codecarbon" in france.source
    monkeypatch.setenv("LEPTON_CARBON_REGION", "gcp:europe-west1")
    assert carbon_intensity(MonitorSettings()).source == "codecarbon cloud impact table"
