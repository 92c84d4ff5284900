"""In-memory LoadedModel objects (real transform and network, no registry) for unit tests."""

from __future__ import annotations

import torch

from services.serving.inputs import RecordSchema
from services.serving.model import LoadedModel
from shared.datasets import load_spec
from shared.models.nets import architecture, build_model
from shared.models.registry import ModelCard
from tests.unit.serving.support import fitted_transform


def loaded(version: int, name: str = "fraud") -> LoadedModel:
    """A scoring-ready LoadedModel of `version` with random weights."""
    transform = fitted_transform()
    arch = architecture("logistic", transform.dim)
    torch.manual_seed(version)
    net = build_model(arch).eval()
    card = ModelCard(model=name, version=version, dataset="transactions", spec_hash="x",
                     architecture=arch, feature_transform=transform.to_dict())
    schema = RecordSchema(load_spec("transactions"))
    return LoadedModel(name, version, card, transform, net, schema)
