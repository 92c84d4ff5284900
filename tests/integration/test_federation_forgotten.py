"""The federation coordinator starts from the live version unless `lepton forget` marked it
`contains_forgotten`: every model federated from it would carry the subject on; a release whose
sites report subjects forgotten mid-federation is saved refused and marked."""

from __future__ import annotations

import threading

from services.federation.config import FederationSettings
from services.federation.coordinator import Coordinator
from services.federation.release import refuse_forgotten, release
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.kafka import make_producer
from shared.models.features import FeatureTransform
from shared.models.gate import GateResult
from shared.models.nets import architecture, build_model
from shared.models.registry import ModelCard, Registry
from shared.principals import Principal
from shared.tracing import get_tracer


def test_a_federation_never_starts_from_a_marked_live_version(
        lepton_env: LeptonSettings) -> None:
    settings = FederationSettings(federation_dataset="breast_cancer",
                                  federation_sites=("site-a", "site-b"))
    settings.sites_path().mkdir(parents=True, exist_ok=True)
    spec = load_spec("breast_cancer")
    transform = FeatureTransform.from_spec(spec)
    arch = architecture(spec.model.kind, transform.dim, spec.model.hidden)
    registry = Registry(settings)
    card = registry.save(ModelCard(
        model=settings.model_name(), dataset=spec.name, spec_hash=spec.spec_hash(),
        architecture=arch, feature_transform=transform.to_dict(), metrics={},
        status="promoted"), build_model(arch).state_dict())
    registry.set_live(card.model, card.version)
    coordinator = Coordinator(settings, threading.Event())
    try:
        start = coordinator.live_start()
        assert start is not None and start[0].version == card.version
        registry.mark(card.model, card.version, contains_forgotten=True)
        assert coordinator.live_start() is None
    finally:
        coordinator.producer.flush(5)


def test_a_release_carrying_forgotten_subjects_is_saved_refused_marked_and_not_live(
        lepton_env: LeptonSettings) -> None:
    settings = FederationSettings(federation_dataset="breast_cancer",
                                  federation_sites=("site-a", "site-b"))
    spec = load_spec("breast_cancer")
    transform = FeatureTransform.from_spec(spec)
    arch = architecture(spec.model.kind, transform.dim, spec.model.hidden)
    registry = Registry(settings)
    producer = make_producer(settings)

    def released(sites: dict[str, dict[str, float]]) -> ModelCard:
        verdict = refuse_forgotten(GateResult(True), sites)  # the gate itself promoted it
        card = ModelCard(model=settings.model_name(), dataset=spec.name,
                         spec_hash=spec.spec_hash(), architecture=arch,
                         feature_transform=transform.to_dict(), metrics={},
                         privacy={"mode": "federated", "sites": sites},
                         status="promoted" if verdict.promoted else "refused",
                         gate={"reasons": verdict.reasons})
        return release(settings, spec, registry, producer,
                       Principal.load(settings, "federation"), get_tracer(__name__), card,
                       build_model(arch).state_dict(), verdict)

    clean = released({"site-a": {"epsilon": 1.0}, "site-b": {"epsilon": 1.0}})
    assert clean.status == "promoted" and registry.live(clean.model) == clean.version
    assert not registry.contains_forgotten(clean.model, clean.version)
    carried = released({"site-a": {"epsilon": 1.0, "forgotten_during": 2},
                        "site-b": {"epsilon": 1.0}})
    assert producer.flush(10) == 0
    assert carried.status == "refused" and carried.gate["reasons"] == [
        "contains_forgotten: subjects forgotten during the federation, after earlier rounds "
        "trained on them (site-a: 2)"]
    assert registry.contains_forgotten(carried.model, carried.version)
    assert registry.live(carried.model) == clean.version
