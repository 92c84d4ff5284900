"""`lepton federate`: run one federation (FedAvg rounds over the sites, evaluation, gate and
release) in the foreground and print its outcome as JSON; `lepton federation` runs the
coordinator service."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer


def federate(
    sites: Annotated[str, typer.Option(help="Comma-separated site names.")],
    dataset: Annotated[str | None, typer.Option(help="Dataset spec.")] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="FedAvg rounds.")] = None,
    min_sites: Annotated[int | None, typer.Option(min=1, help="Quorum per round.")] = None,
    round_timeout: Annotated[float | None, typer.Option(
        min=0.1, help="Deadline of a round in seconds.")] = None,
    noise_multiplier: Annotated[float | None, typer.Option(
        min=0.0, help="Server-side noise multiplier z (std z·C·max weight).")] = None,
    federation_id: Annotated[str | None, typer.Option(help="Federation id.")] = None,
    secure_aggregation: Annotated[bool, typer.Option(
        help="Double-masked secure aggregation (the coordinator sees only sums).")] = False,
) -> None:
    """Run one federation over SITES and release its model like a trained one.

    Exit 1 when it ended without a release (no quorum), 0 otherwise (promoted or
    refused by the gate)."""
    import orjson

    from services.federation.config import FederationSettings
    from services.federation.coordinator import Coordinator
    from shared.config import load_settings
    from shared.signals import stop_event
    from shared.tracing import setup_telemetry, shutdown_telemetry

    names = [s.strip() for s in sites.split(",") if s.strip()]
    overrides = {"SITES": orjson.dumps(names).decode(), "DATASET": dataset, "ROUNDS": rounds,
                 "MIN_SITES": min_sites, "ROUND_TIMEOUT_S": round_timeout,
                 "NOISE_MULTIPLIER": noise_multiplier, "ID": federation_id,
                 "SECURE_AGGREGATION": "true" if secure_aggregation else None}
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"LEPTON_FEDERATION_{name}"] = str(value)
    os.environ.pop("LEPTON_FEDERATION_INTERVAL_S", None)
    settings = load_settings(FederationSettings)
    setup_telemetry("lepton-federate")
    try:
        coordinator = Coordinator(settings, stop_event())
        outcome = coordinator.federate(settings.federation_id or _fresh_id())
    finally:
        shutdown_telemetry()
    sys.stdout.write(orjson.dumps(outcome.to_dict()).decode() + "\n")
    if outcome.status == "aborted":
        raise typer.Exit(1)


def _fresh_id() -> str:
    import uuid

    return f"fed-{uuid.uuid4().hex[:12]}"


def federation() -> None:
    """Run the federation coordinator service (LEPTON_FEDERATION_* settings)."""
    from services.federation.__main__ import main

    main()


def register(app: typer.Typer) -> None:
    """Add `lepton federate` and `lepton federation`."""
    app.command("federate")(federate)
    app.command("federation")(federation)
