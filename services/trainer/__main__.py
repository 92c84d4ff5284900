"""Entry point: `python -m services.trainer` (also `lepton trainer`).

Without `--rank` it runs one rank in-process, or launches `LEPTON_TRAINER_WORKERS` rank
processes; `--rank/--world-size/--master-port` are what the launcher passes to each rank.
"""

from __future__ import annotations

import argparse
import logging
import sys

from services.trainer.config import TrainerSettings
from shared.config import ConfigError, load_settings
from shared.kafka import ensure_topics
from shared.logs import setup_logging
from shared.signals import stop_event
from shared.topics import Topics
from shared.tracing import setup_telemetry, shutdown_telemetry

log = logging.getLogger("services.trainer")


def main(argv: list[str] | None = None) -> int:
    """Run the trainer; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m services.trainer")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--world-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--master-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = load_settings(TrainerSettings)
    setup_logging("trainer", settings.log_level, settings.log_format)
    try:
        topics = Topics(settings.topic_prefix)
        ensure_topics(settings, [topics.governed, topics.models, topics.audit_requests])
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 78
    stop = stop_event()
    from services.trainer.worker import launch, run_rank

    if args.rank is None and settings.trainer_workers > 1:
        return launch(settings, stop)
    rank = args.rank or 0
    port = settings.metrics_port
    setup_telemetry("trainer", metrics_port=None if port is None else port + rank)
    try:
        return run_rank(settings, args.rank or 0, args.world_size, args.master_port, stop)
    except Exception:
        log.exception("trainer rank %s failed", args.rank or 0)
        return 1
    finally:
        shutdown_telemetry()


if __name__ == "__main__":
    sys.exit(main())
