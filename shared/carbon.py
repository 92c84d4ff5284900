"""Carbon intensity of the grid a process runs on (g CO2e per kWh), configurable per region.

Consumes `LEPTON_CARBON_G_PER_KWH` (a number: it wins), else `LEPTON_CARBON_REGION`: an ISO
3166 alpha-3 country code (`FRA`) looked up in codecarbon's energy-mix data, or a cloud region
`provider:region` (e.g. `gcp:europe-west1`; the providers codecarbon lists) looked up in
codecarbon's cloud impact table; codecarbon's data files are read where the package is
installed (it is never imported). Produces a `CarbonIntensity` that names where its number
came from; with neither setting it is the world average, labelled as a default.
"""

from __future__ import annotations

import csv
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from shared.config import ConfigError, LeptonSettings

# IEA's world average for electricity generation (2019), codecarbon's own fallback figure
WORLD_AVERAGE_G_PER_KWH = 475.0


@dataclass(frozen=True)
class CarbonIntensity:
    """Grams of CO2e per kWh, with the region and the source of the number."""

    g_per_kwh: float
    region: str | None
    source: str

    def grams(self, joules: float) -> float:
        """Grams CO2e for `joules` at this intensity."""
        return joules / 3.6e6 * self.g_per_kwh

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (model cards, energy records, reports)."""
        return {"g_per_kwh": self.g_per_kwh, "region": self.region, "source": self.source}


def _codecarbon_data() -> Path | None:
    found = importlib.util.find_spec("codecarbon")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations))) / "data"


@cache
def _lookup(region: str) -> tuple[float, str] | None:
    data = _codecarbon_data()
    if data is None:
        return None
    if ":" in region:
        provider, name = region.split(":", 1)
        with (data / "cloud" / "impact.csv").open(encoding="utf-8-sig", newline="") as handle:
            for row in csv.DictReader(handle):
                if row["provider"] == provider.lower() and row["region"] == name:
                    return float(row["impact"]), "codecarbon cloud impact table"
        return None
    mix = orjson.loads((data / "private_infra" / "global_energy_mix.json").read_bytes())
    entry = mix.get(region.upper())
    if not isinstance(entry, dict) or "carbon_intensity" not in entry:
        return None
    return float(entry["carbon_intensity"]), (
        f"codecarbon energy mix ({entry.get('year', 'n/a')})")


def carbon_intensity(settings: LeptonSettings) -> CarbonIntensity:
    """The configured intensity; ConfigError when a region is set that cannot be resolved."""
    if settings.carbon_g_per_kwh is not None:
        return CarbonIntensity(settings.carbon_g_per_kwh, settings.carbon_region,
                               "setting LEPTON_CARBON_G_PER_KWH")
    region = settings.carbon_region
    if region:
        try:
            found = _lookup(region)
        except (OSError, KeyError, ValueError, orjson.JSONDecodeError) as error:
            raise ConfigError(f"LEPTON_CARBON_REGION: codecarbon's data unreadable: "
                              f"{error}") from None
        if found is None:
            where = "codecarbon is not installed" if _codecarbon_data() is None else \
                "not in codecarbon's data"
            raise ConfigError(f"LEPTON_CARBON_REGION {region!r}: {where}; set "
                              "LEPTON_CARBON_G_PER_KWH instead")
        return CarbonIntensity(found[0], region, found[1])
    return CarbonIntensity(WORLD_AVERAGE_G_PER_KWH, None,
                           "default: world average (set LEPTON_CARBON_REGION or "
                           "LEPTON_CARBON_G_PER_KWH)")
