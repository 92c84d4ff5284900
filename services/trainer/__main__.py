"""Entry point: `python -m services.trainer` (also `lepton trainer`). Consumes events.governed;
produces models.updates and audit.requests.

Without `--rank` it runs one rank in-process, or launches `LEPTON_TRAINER_WORKERS` rank
processes; `--rank/--world-size/--master-port` are what the launcher passes to each rank. With
`LEPTON_TRAINER_FEDERATION_SITE` it runs as that federated site instead (site.py): it follows
`federation.rounds` and answers on `federation.updates` on the federation's cluster.
"""

from __future__ import annotations

import argparse
import threading
from typing import NoReturn

from services.trainer.config import TrainerSettings
from shared.kafka import ensure_topics
from shared.stage import run_service
from shared.topics import Topics


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the trainer (a launcher of ranks, or one rank) and exit with its status."""
    parser = argparse.ArgumentParser(prog="python -m services.trainer")
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--world-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--master-port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    def launcher(settings: TrainerSettings) -> bool:
        return args.rank is None and settings.trainer_workers > 1

    def run(settings: TrainerSettings, stop: threading.Event) -> int:
        from services.trainer.worker import launch, run_rank

        topics = Topics(settings.topic_prefix)
        ensure_topics(settings, [topics.governed, topics.models, topics.audit_requests],
                      stop=stop)
        if settings.trainer_federation_site:
            from services.trainer.site import FederatedSite

            federation = settings.federation_settings()
            shared = Topics(federation.topic_prefix)
            ensure_topics(federation, [shared.federation_rounds, shared.federation_updates],
                          stop=stop)
            return FederatedSite(settings, stop).run()
        if launcher(settings):
            return launch(settings, stop)
        return run_rank(settings, args.rank or 0, args.world_size, args.master_port, stop)

    def metrics_port(settings: TrainerSettings) -> int | None:
        port = settings.metrics_port
        return None if port is None or launcher(settings) else port + (args.rank or 0)

    run_service("trainer", TrainerSettings, run, metrics_port=metrics_port)


if __name__ == "__main__":
    main()
