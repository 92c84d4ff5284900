"""The federation coordinator starts from the live version unless `lepton forget` marked it
`contains_forgotten`: every model federated from it would carry the subject on."""

from __future__ import annotations

import threading

from services.federation.config import FederationSettings
from services.federation.coordinator import Coordinator
from shared.config import LeptonSettings
from shared.datasets import load_spec
from shared.models.features import FeatureTransform
from shared.models.nets import architecture, build_model
from shared.models.registry import ModelCard, Registry


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
