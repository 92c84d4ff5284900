"""Entry point of the governance process: `python -m services.governance` (or `lepton
governance`). Consumes events.clean and audit.requests; produces events.governed and audit.log."""

from __future__ import annotations

import threading
from typing import NoReturn

from services.governance.config import GovernanceSettings
from services.governance.service import AlreadyRunning, GovernanceService
from services.governance.store import StoreError
from shared.stage import run_service


def run(settings: GovernanceSettings, stop: threading.Event) -> int:
    """Run the governance loop until stopped; its exit status."""
    return GovernanceService(settings, stop).run()


def main() -> NoReturn:
    """Run the service and exit with its status."""
    run_service("governance", GovernanceSettings, run, fatal=(AlreadyRunning, StoreError))


if __name__ == "__main__":
    main()
