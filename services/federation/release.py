"""A federated candidate's release, through the same pieces as a trained model's: the gate
(shared.models.gate, on the pooled held-out metrics), the registry (signed safetensors and
card), the live pointer, signed `model_promoted`/`model_refused` decisions on `audit.requests`
and the signed announcement on `models.updates` (shared.models.announce), signed by the
coordinator's own principal (`federation`, an allowed announcer of `promote`).

Consumes the aggregated weights and what the rounds recorded; produces the saved card (refused
and marked `contains_forgotten` when a site's subjects were forgotten mid-federation). The card
lists each site's contribution (rounds, sample counts, held-out rows, ε, release id and ledger
verdict), the rounds (sites, missing, bytes), the dropped answers, and never a row.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from confluent_kafka import Producer
from opentelemetry import trace

from services.federation.config import FederationSettings
from shared.datasets.spec import DatasetSpec
from shared.decisions import publish_decision
from shared.events import Decision
from shared.models.announce import announce
from shared.models.gate import GateResult
from shared.models.registry import ModelCard, Registry
from shared.principals import Principal

log = logging.getLogger(__name__)
ACTOR = "federation"


def refuse_forgotten(verdict: GateResult, sites: Mapping[str, Mapping[str, Any]]
                     ) -> GateResult:
    """The gate's verdict, refused when a site's subjects were forgotten after earlier rounds
    trained on them; `sites` are the sites' privacy facts (the card's `privacy.sites`)."""
    reason = _forgotten_during(sites)
    return verdict if reason is None else GateResult(False, [*verdict.reasons, reason],
                                                     verdict.compared_to)


def _forgotten_during(sites: Mapping[str, Mapping[str, Any]]) -> str | None:
    named = ", ".join(f"{s}: {n}" for s, p in sorted(sites.items())
                      if (n := int(p.get("forgotten_during", 0))))
    return (f"contains_forgotten: subjects forgotten during the federation, after earlier "
            f"rounds trained on them ({named})") if named else None


def release(settings: FederationSettings, spec: DatasetSpec, registry: Registry,
            producer: Producer, signer: Principal, tracer: trace.Tracer,
            card: ModelCard, state: dict[str, torch.Tensor], verdict: GateResult) -> ModelCard:
    """Save the card and weights (marked `contains_forgotten` when its sites' privacy facts
    say so); when the gate promoted it, make it live and announce it."""
    with tracer.start_as_current_span("federation release") as span:
        saved = registry.save(card, state)
        if _forgotten_during(saved.privacy.get("sites") or {}) is not None:
            registry.mark(saved.model, saved.version, contains_forgotten=True)
        span.set_attribute("lepton.model.version", saved.version)
        ident = f"{saved.model}-v{saved.version}-{saved.sha256[:16]}"
        detail: dict[str, Any] = {
            "version": saved.version, "metrics": saved.metrics,
            "reasons": verdict.reasons, "compared_to": verdict.compared_to,
            "sha256": saved.sha256, "privacy": {k: saved.privacy.get(k) for k in (
                "mode", "epsilon", "delta")},
            "federation": saved.lineage.get("federation", {}).get("id")}
        if saved.status == "promoted":
            registry.set_live(saved.model, saved.version)
            publish_decision(producer, settings, Decision(
                decision_id=f"{ident}-promoted", kind="model_promoted", actor=ACTOR,
                dataset=spec.name, detail=detail), signer=signer)
            announce(producer, settings, registry, saved, "promote", None, tracer,
                     signer=signer)
        else:
            publish_decision(producer, settings, Decision(
                decision_id=f"{ident}-refused", kind="model_refused", actor=ACTOR,
                dataset=spec.name, detail=detail), signer=signer)
    log.info("%s v%d %s (pooled f1 %.4f, auc %.4f%s)", saved.model, saved.version,
             saved.status, saved.metrics.get("f1", float("nan")),
             saved.metrics.get("roc_auc", float("nan")),
             "" if verdict.promoted else f"; {'; '.join(verdict.reasons)}")
    return saved
