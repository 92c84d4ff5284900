"""Entry point of the federation coordinator: `python -m services.federation` (and `lepton
federate`). Consumes federation.updates; produces federation.rounds, models.updates and
audit.requests."""

from __future__ import annotations

import threading
from typing import NoReturn

from services.federation.config import FederationSettings
from shared.stage import run_service


def run(settings: FederationSettings, stop: threading.Event) -> int:
    """Run federations until stopped (or one, without an interval); its exit status."""
    from services.federation.coordinator import Coordinator

    return Coordinator(settings, stop).run()


def main() -> NoReturn:
    """Run the service and exit with its status."""
    run_service("federation", FederationSettings, run)


if __name__ == "__main__":
    main()
