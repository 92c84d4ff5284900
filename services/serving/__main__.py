"""Entry point of the serving process: `python -m services.serving` (or `lepton serving`).
Consumes models.updates and predictions.requests; answers gRPC (and HTTP); produces
predictions.results and predictions.log."""

from __future__ import annotations

import asyncio
import threading
from typing import NoReturn

from services.serving.config import ServingSettings
from shared.kafka import ensure_topics
from shared.stage import run_service
from shared.topics import Topics


def run(settings: ServingSettings, stop: threading.Event) -> int:
    """Serve until stopped; the exit status."""
    import torch

    from services.serving.server import ServingApp

    ensure_topics(settings, [Topics(settings.topic_prefix).models], stop=stop)
    torch.set_num_threads(settings.serving_torch_threads)
    asyncio.run(ServingApp(settings).run(stop))
    return 0


def main() -> NoReturn:
    """Run the service and exit with its status."""
    run_service("serving", ServingSettings, run)


if __name__ == "__main__":
    main()
