"""The federation tests' world (tests/integration/federation_world.py): one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.integration.federation_world import World, make_world


@pytest.fixture(scope="module")
def world(broker: str, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[World]:
    """Three sites with their pipelines done and a coordinator (single-threaded torch)."""
    torch.set_num_threads(1)
    yield from make_world(broker, tmp_path_factory.mktemp(request.module.__name__.split(".")[-1]))
