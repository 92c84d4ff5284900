"""Entry point of the serving process: `python -m services.serving` (or `lepton serving`)."""

from __future__ import annotations

import asyncio
import sys


def main() -> None:
    """Load settings, set up telemetry and serve until SIGINT/SIGTERM."""
    from services.serving.config import ServingSettings
    from shared.config import EXIT_CONFIG, ConfigError, load_settings
    from shared.kafka import ensure_topics
    from shared.logs import setup_logging
    from shared.signals import stop_event
    from shared.topics import Topics
    from shared.tracing import setup_telemetry, shutdown_telemetry

    settings = load_settings(ServingSettings)
    setup_logging("serving", settings.log_level, settings.log_format)
    try:
        ensure_topics(settings, [Topics(settings.topic_prefix).models])
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        sys.exit(78)
    stop = stop_event()
    setup_telemetry("serving", metrics_port=settings.metrics_port)
    import torch

    torch.set_num_threads(settings.serving_torch_threads)
    from services.serving.server import ServingApp

    try:
        asyncio.run(ServingApp(settings).run(stop))
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    main()
