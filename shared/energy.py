"""Energy meters, by the best source available:

- GPU: NVML's total-energy counter of the device (nvidia-ml-py), in millijoules;
- CPU: RAPL package counters under /sys/class/powercap when readable (whole package);
- otherwise an estimate, labelled as such: this process's CPU seconds × an assumed
  `watts_per_core` (a share of the package TDP; default 10 W per busy core).

`EnergyMeter` measures a stretch of work on one device (the trainer's cycles; the whole package
under RAPL, so only rank 0 reports it). `ProcessEnergy` is what every service runs: this
process's joules since it started, where RAPL's package energy is attributed by the process's
share of the machine's busy CPU time (several services on one host then add up to at most the
package, never several times it). CO2e = energy in kWh × the grid's carbon intensity
(shared/carbon.py).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
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


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy (every core, idle and I/O wait excluded)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class ProcessEnergy:
    """This process's joules since it was created: RAPL package energy × the process's share
    of the machine's busy CPU time when RAPL is readable, else a labelled estimate
    (CPU seconds × `watts_per_core`). `read()` is thread-safe."""

    def __init__(self, watts_per_core: float) -> None:
        self.watts_per_core = watts_per_core
        self._rapl = _rapl_domains()
        self.method = "rapl" if self._rapl else "estimate"
        self._process = psutil.Process()
        self._lock = threading.Lock()
        self._joules = 0.0
        self._cpu_s = 0.0
        self._last = self._sample()

    @property
    def is_estimate(self) -> bool:
        """True when no hardware counter is read."""
        return self.method == "estimate"

    def describe(self) -> str:
        """How the energy is measured, for records and reports."""
        if self.method == "rapl":
            return "rapl: CPU package energy x this process's share of busy CPU time"
        return f"estimate: CPU seconds x {self.watts_per_core:g} W per busy core (no RAPL)"

    def _sample(self) -> tuple[float, float, float]:
        times = self._process.cpu_times()
        rapl = sum((_read_int(p / "energy_uj") or 0) for p in self._rapl) / 1e6
        return times.user + times.system, _busy_cpu_s() if self._rapl else 0.0, rapl

    @property
    def cpu_s(self) -> float:
        """CPU seconds this process used up to the last `read()`."""
        return self._cpu_s

    def read(self) -> float:
        """Joules used by this process so far."""
        with self._lock:
            now = self._sample()
            process_s = max(0.0, now[0] - self._last[0])
            if self.method == "rapl":
                package = now[2] - self._last[2]
                if package < 0:  # the counter wrapped
                    package += sum((_read_int(p / "max_energy_range_uj") or 0)
                                   for p in self._rapl) / 1e6
                busy = now[1] - self._last[1]
                share = min(1.0, process_s / busy) if busy > 0 else 0.0
                self._joules += max(package, 0.0) * share
            else:
                self._joules += process_s * self.watts_per_core
            self._cpu_s += process_s
            self._last = now
            return self._joules
