"""Entry point of the governance process: `python -m services.governance` (or `lepton
governance`). Consumes events.clean and audit.requests; produces events.governed and audit.log."""

from __future__ import annotations

import logging
import sys

from services.governance.config import GovernanceSettings
from shared.config import ConfigError, load_settings

log = logging.getLogger("services.governance")


def main() -> None:
    """Run the governance loop until SIGINT/SIGTERM; exit 0 after a clean stop."""
    from services.governance.service import AlreadyRunning, GovernanceService
    from services.governance.store import StoreError
    from shared.logs import setup_logging
    from shared.signals import stop_event
    from shared.tracing import setup_telemetry, shutdown_telemetry

    settings = load_settings(GovernanceSettings)
    setup_logging("governance", settings.log_level, settings.log_format)
    stop = stop_event()
    setup_telemetry("governance", metrics_port=settings.metrics_port)
    try:
        GovernanceService(settings, stop).run()
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(78) from None
    except (AlreadyRunning, StoreError) as error:
        print(f"governance: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    main()
