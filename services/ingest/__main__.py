"""Entry point of the ingest service: `python -m services.ingest` (and `lepton ingest`)."""

from __future__ import annotations

import sys

from services.ingest.config import IngestSettings
from shared.config import ConfigError, load_settings


def main() -> int:
    """Run one ingest replica until SIGINT/SIGTERM; returns the exit status."""
    from services.ingest.worker import IngestWorker
    from shared.logs import setup_logging
    from shared.signals import stop_event
    from shared.tracing import setup_telemetry, shutdown_telemetry

    settings = load_settings(IngestSettings)
    setup_logging("ingest", settings.log_level, settings.log_format)
    stop = stop_event()
    setup_telemetry("ingest", metrics_port=settings.metrics_port)
    try:
        return IngestWorker(settings, stop).run()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 78
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    sys.exit(main())
