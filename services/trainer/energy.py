"""Energy used while training, by the best source available:

- GPU: NVML's total-energy counter of the device (nvidia-ml-py), in millijoules;
- CPU: RAPL package counters under /sys/class/powercap when readable (whole package, so only
  rank 0 reports it);
- otherwise an estimate, labelled as such: this process's CPU seconds × an assumed
  `watts_per_core` (a share of the package TDP; default 10 W per busy core).

CO2e = energy in kWh × the grid's carbon intensity (g CO2e per kWh).
"""

from __future__ import annotations

import logging
from pathlib import Path

import psutil
import torch

log = logging.getLogger(__name__)
RAPL_ROOT = Path("/sys/class/powercap")


def co2e_grams(joules: float, grams_per_kwh: float) -> float:
    """Grams CO2e for `joules` at the given grid intensity."""
    return joules / 3.6e6 * grams_per_kwh


def _rapl_domains() -> list[Path]:
    if not RAPL_ROOT.is_dir():
        return []
    domains = [p for p in RAPL_ROOT.glob("intel-rapl:*") if p.name.count(":") == 1]
    return [p for p in domains if _read_int(p / "energy_uj") is not None]


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


class EnergyMeter:
    """Measure energy between `start()` and `read()` (joules, method)."""

    def __init__(self, device: torch.device, watts_per_core: float, rank: int = 0) -> None:
        self.device = device
        self.watts_per_core = watts_per_core
        self.rank = rank
        self.method = "estimate"
        self._nvml_handle: object | None = None
        self._rapl = _rapl_domains()
        self._process = psutil.Process()
        if device.type == "cuda":
            self._nvml_handle = self._init_nvml(device)
        if self._nvml_handle is not None:
            self.method = "nvml"
        elif self._rapl:
            self.method = "rapl"
        self._start = 0.0

    @staticmethod
    def _init_nvml(device: torch.device) -> object | None:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle: object = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            return handle
        except Exception as error:  # no driver, or an old GPU without the counter
            log.info("NVML energy counter unavailable (%s); estimating instead", error)
            return None

    def describe(self) -> str:
        """How energy is measured, for the model card."""
        if self.method == "nvml":
            return "nvml: GPU total energy counter"
        if self.method == "rapl":
            return "rapl: CPU package counters (whole package, rank 0)"
        return f"estimate: CPU seconds x {self.watts_per_core:g} W per busy core (no RAPL)"

    def _counter(self) -> float:
        if self.method == "nvml":
            import pynvml

            return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(self._nvml_handle)) / 1000.0
        if self.method == "rapl":
            return sum((_read_int(p / "energy_uj") or 0) for p in self._rapl) / 1e6
        times = self._process.cpu_times()
        return (times.user + times.system) * self.watts_per_core

    def start(self) -> None:
        """Begin a measurement."""
        self._start = self._counter()

    def read(self) -> float:
        """Joules since `start()` (0 from non-zero ranks when RAPL counts the whole package)."""
        if self.method == "rapl" and self.rank != 0:
            return 0.0
        used = self._counter() - self._start
        if used < 0 and self.method == "rapl":  # the counter wrapped
            wrap = sum((_read_int(p / "max_energy_range_uj") or 0) for p in self._rapl) / 1e6
            used += wrap
        return max(used, 0.0)
