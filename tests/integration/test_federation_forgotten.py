"""The federation coordinator starts from the live version unless `lepton forget` marked it
`contains_forgotten`: every model federated from it would carry the subject on; a release whose
sites report subjects forgotten mid-federation is saved refused and marked."""

from __future__ import annotations

import threading

from services.federation.config import FederationSettings
from services.federation.coordinator import Coordinator
from services.federation.release import forgotten_during, release
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


def test_a_release_carrying_forgotten_subjects_is_saved_marked_and_not_made_live(
        lepton_env: LeptonSettings) -> None:
    settings = FederationSettings(federation_dataset="breast_cancer",
                                  federation_sites=("site-a", "site-b"))
    spec = load_spec("breast_cancer")
    transform = FeatureTransform.from_spec(spec)
    arch = architecture(spec.model.kind, transform.dim, spec.model.hidden)
    registry = Registry(settings)
    reason = forgotten_during({"site-a": {"privacy": {"forgotten_during": 2}}})
    assert reason is not None
    card = ModelCard(model=settings.model_name(), dataset=spec.name,
                     spec_hash=spec.spec_hash(), architecture=arch,
                     feature_transform=transform.to_dict(), metrics={}, status="refused")
    producer = make_producer(settings)
    saved = release(settings, spec, registry, producer, Principal.load(settings, "federation"),
                    get_tracer(__name__), card, build_model(arch).state_dict(),
                    GateResult(False, [reason]), contains_forgotten=True)
    assert producer.flush(10) == 0
    assert registry.contains_forgotten(saved.model, saved.version)
    assert registry.live(saved.model) is None
