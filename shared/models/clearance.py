"""Whether a model version may answer anyone: its card must say how it is private, and a
model-mode (DP-SGD) version only once governance charged its release to every contributing
subject. A gate-refused DP candidate is never charged, so it can never be served, pinned or
promoted by an operator override: the override bypasses the quality gate, never privacy.

Consumes a `ModelCard`; produces a reason when the version must not be served (None when it
may). A federated version needs every contributing site's release charged by that site's
governance. Used by serving's loader (every path that hosts a version) and the operator CLI.
"""

from __future__ import annotations

from shared.models.registry import ModelCard


def privacy_refusal(card: ModelCard) -> str | None:
    """Why `card`'s version may not be served on privacy grounds, or None when it may."""
    privacy = card.privacy
    mode = privacy.get("mode")
    if mode == "model":
        ledger = privacy.get("ledger") or {}
        if ledger.get("status") == "charged":
            return None
        return (f"its DP release was never charged to the privacy ledger "
                f"({ledger.get('status') or 'no charge'}); only charged releases are served")
    if mode == "federated":
        sites = privacy.get("sites") or {}
        uncharged = sorted(site for site, facts in sites.items()
                           if ((facts or {}).get("ledger") or {}).get("status") != "charged")
        if sites and not uncharged:
            return None
        return ("no contributing site's DP release was charged" if not sites else
                f"sites {', '.join(uncharged)} never had their DP release charged")
    if mode == "local":
        return None
    if mode == "non-private" and privacy.get("non_private") is True:
        return None
    return "its card does not state its privacy (mode model, federated, local or non-private)"
