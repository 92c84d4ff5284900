"""Fixtures for trainer unit tests: settings on real Redis and a temporary data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import LeptonSettings
from tests.conftest import REDIS_URL


@pytest.fixture
def settings(redis_prefix: str, tmp_path: Path) -> LeptonSettings:
    """Settings pointing at real Redis (private prefix) and a fresh data dir; no broker."""
    return LeptonSettings(redis_url=REDIS_URL, redis_prefix=redis_prefix,
                          data_dir=tmp_path / "data")
