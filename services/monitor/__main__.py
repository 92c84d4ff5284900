"""Entry point of the monitor process: `python -m services.monitor` (or `lepton monitor run`).
Consumes predictions.log and events.governed; produces signed decisions on audit.requests,
Prometheus metrics and the reports `lepton monitor report` reads."""

from __future__ import annotations

import threading
from typing import NoReturn

from services.monitor.config import MonitorSettings
from shared.stage import run_service


def run(settings: MonitorSettings, stop: threading.Event) -> int:
    """Monitor until stopped; the exit status."""
    from services.monitor.service import run_monitor

    return run_monitor(settings, stop)


def main() -> NoReturn:
    """Run the service and exit with its status."""
    run_service("monitor", MonitorSettings, run)


if __name__ == "__main__":
    main()
