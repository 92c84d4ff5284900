"""What the governance commands share: consumes the LEPTON_* environment, produces the
governance settings."""

from __future__ import annotations

from services.governance.config import GovernanceSettings


def load_governance_settings() -> GovernanceSettings:
    """The governance settings from the environment."""
    from shared.config import load_settings

    return load_settings(GovernanceSettings)
