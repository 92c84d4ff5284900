"""Entry point of the ingest service: `python -m services.ingest` (and `lepton ingest`).
Consumes events.raw; produces events.clean and events.rejected."""

from __future__ import annotations

import threading
from typing import NoReturn

from services.ingest.config import IngestSettings
from shared.stage import run_service


def run(settings: IngestSettings, stop: threading.Event) -> int:
    """Run one ingest replica until stopped; its exit status."""
    from services.ingest.worker import IngestWorker

    return IngestWorker(settings, stop).run()


def main() -> NoReturn:
    """Run the service and exit with its status."""
    run_service("ingest", IngestSettings, run)


if __name__ == "__main__":
    main()
