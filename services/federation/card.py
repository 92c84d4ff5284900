"""What a federation's rounds recorded, and the parts of the model card made from it: the
lineage (each site's rounds, samples and held-out metrics, the rounds with their sites, missing
sites and bytes, declined sites and dropped answers: never a row), the training facts, and the
privacy object (each site's charged DP-SGD, the largest site ε, the client-level noise and its
site-level ε, whether aggregation was secure), and how a federation ended (Outcome)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.federation.aggregate import site_level_epsilon
from services.federation.config import FederationSettings
from shared.datasets.spec import DatasetSpec
from shared.models.registry import ModelCard

SECURE = ("double masking (Bonawitz et al. 2017: survivors reveal their own self seeds and "
          "their seeds with dropped sites; a site lost before the unmask has its self seed "
          "rebuilt from the Shamir shares it sealed to its peers): the coordinator sees only "
          "sums of at least two sites' updates, and relies on each site's clipping")


@dataclass
class Progress:
    """What the rounds of one federation recorded."""

    sites: dict[str, dict[str, Any]]
    declined: dict[str, str] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    noise_std: float = 0.0
    key_exchange_bytes: int = 0

    def bytes_per_round(self) -> list[int]:
        """Task bytes out plus answer bytes in, per round (with a secure round's unmask step;
        the key exchange before round 1 is `key_exchange_bytes`)."""
        return [int(r["bytes_out"]) + int(r["bytes_in"]) + int(r.get("bytes_unmask", 0))
                for r in self.rounds]


def card_lineage(federation: str, topic: str, progress: Progress,
                 dropped: list[dict[str, Any]]) -> dict[str, Any]:
    """The card's lineage: contributions and rounds, no data."""
    return {"federation": {
        "id": federation, "topic": topic,
        "sites": {s: {k: v for k, v in e.items() if k != "privacy"}
                  for s, e in progress.sites.items()},
        "declined": progress.declined, "rounds": progress.rounds, "dropped": dropped}}


def card_training(settings: FederationSettings, progress: Progress,
                  warm_start: int | None) -> dict[str, Any]:
    """The card's training facts."""
    return {"algorithm": "fedavg", "local_optimizer": "sgd (DP-SGD, Opacus)",
            "learning_rate": settings.federation_learning_rate,
            "rounds": len(progress.rounds), "rounds_planned": settings.federation_rounds,
            "local_epochs": settings.federation_local_epochs,
            "minibatch": settings.federation_minibatch,
            "min_sites": settings.federation_min_sites,
            "round_timeout_s": settings.federation_round_timeout_s,
            "bytes_per_round": progress.bytes_per_round(),
            "key_exchange_bytes": progress.key_exchange_bytes, "warm_start_version": warm_start}


def card_privacy(settings: FederationSettings, spec: DatasetSpec, progress: Progress
                 ) -> dict[str, Any]:
    """The card's privacy object: each site's charged DP-SGD, the largest ε, and the
    client-level (site) guarantee of the server's noise."""
    delta = spec.privacy.delta
    sites = {s: e["privacy"] for s, e in progress.sites.items() if e.get("privacy")}
    epsilons = [float(p["epsilon"]) for p in sites.values() if "epsilon" in p]
    noised = len(progress.rounds) if settings.federation_noise_multiplier > 0 else 0
    return {
        "mode": "federated", "epsilon": max(epsilons) if epsilons else None,
        "delta": delta,
        "accountant": "rdp, per site: each site's DP-SGD over every planned round (Opacus "
                      "compute_rdp, Balle et al. 2020 conversion), charged to that site's "
                      "ledger before its first update; ε here is the largest site's (a "
                      "subject belongs to one site)",
        "sites": sites,
        "client_level": {
            "clip_norm": settings.federation_clip_norm,
            "noise_multiplier": settings.federation_noise_multiplier,
            "noise_std": progress.noise_std,
            "site_epsilon": site_level_epsilon(settings.federation_noise_multiplier, noised,
                                               delta),
            "adjacency": "one site's data replaced; against the released model only",
            "calibration": "Flower DifferentialPrivacyServerSideFixedClipping: std = "
                           "z·C·max site weight (z·C/m for equal weights)",
            "aggregation": "FedAvg, weighted by sample counts"},
        "secure_aggregation": SECURE if settings.federation_secure_aggregation else
        "off: the coordinator sees (and re-clips) each site's clipped update (the "
        "per-subject guarantee does not rely on hiding it)",
        "secure_rng": False, "releases": [],
    }


@dataclass
class Outcome:
    """How one federation ended."""

    federation: str
    status: str  # promoted | refused | aborted
    rounds: int
    reason: str = ""
    card: ModelCard | None = None
    bytes_per_round: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (what `lepton federate` prints)."""
        card = self.card
        return {"federation": self.federation, "status": self.status, "rounds": self.rounds,
                "reason": self.reason, "bytes_per_round": self.bytes_per_round,
                "model": card.model if card else None,
                "version": card.version if card else None,
                "metrics": card.metrics if card else None,
                "epsilon": card.epsilon if card else None}
