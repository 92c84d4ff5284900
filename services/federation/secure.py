"""The coordinator's side of secure aggregation (LEPTON_FEDERATION_SECURE_AGGREGATION; the
masking math is shared/secagg.py): the key exchange before round 1, and each round's sum of
double-masked updates, with the survivors' self masks and the dropped sites' pairwise masks
removed from seeds the survivors reveal.

Consumes the sites' `keys` answers (round 0: each site's X25519 public key, inside its signed
SiteUpdate), their masked fit answers (uint64 fixed-point value x sample count, plus a self
mask and pairwise masks) and their `unmask` answers (the survivor's own self-mask seed and its
seeds with the dropped sites only); produces `keys` and `unmask` tasks on `federation.rounds`
and the round's sample-weighted average plus the server's Gaussian noise exactly as
aggregate.fedavg adds it. It never holds one site's update, only the sum of at least two: a
dropped site's self seed is never asked for, so its masked update stays masked even if it is
read after the unmask. A round is refused (no aggregate; the caller records it and keeps the
weights) when fewer than two sites' masked updates came, a survivor does not reveal its seeds
in time, or the unmasked sum is longer than the sites' clip bound allows (a wrong seed or an
unclipped update). It cannot clip a single update (it never sees one): it relies on the sites'.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from services.federation.aggregate import server_noise
from services.federation.inbox import Answer, Inbox
from shared.federation import Arrays, RoundTask
from shared.secagg import (
    FRACTION_BITS,
    MaskingError,
    Words,
    add,
    check_public,
    dequantize,
    from_text,
    remove_masks,
)

log = logging.getLogger(__name__)
Send = Callable[[RoundTask, Arrays], int]


def unmasked_average(total: Words, counts: Mapping[str, int], self_seeds: list[bytes],
                     recovered: list[tuple[str, str, bytes]], clip_norm: float,
                     noise_multiplier: float, rng: np.random.Generator | None = None
                     ) -> tuple[dict[str, npt.NDArray[np.float32]], float]:
    """The masked sum of the `counts` sites with their self masks and dropped peers' masks
    removed, divided by the total count, plus the server's noise (std z·C·max weight);
    (average, noise std)."""
    if len(counts) < 2:
        raise MaskingError("fewer than two masked updates: their sum would be one site's")
    samples = sum(counts.values())
    if samples <= 0:
        raise MaskingError("no samples to average")
    summed = dequantize(remove_masks(total, self_seeds, recovered))
    # each site's update is clipped to C, so ‖Σ nᵢ·xᵢ‖ ≤ C·Σnᵢ up to rounding (half a unit
    # per coordinate and site): beyond it a seed was wrong or a site did not clip
    norm = float(np.sqrt(sum(float(np.sum(np.square(v))) for v in summed.values())))
    size = sum(int(v.size) for v in summed.values())
    slack = len(counts) * 0.5 * np.sqrt(size) / 2 ** FRACTION_BITS
    if norm > clip_norm * samples * (1 + 1e-9) + slack:
        raise MaskingError(f"the unmasked sum's norm {norm:.4g} exceeds the clip bound "
                           f"{clip_norm * samples:.4g} (a wrong seed or an unclipped update)")
    average = {k: v / samples for k, v in summed.items()}
    return server_noise(average, [n / samples for n in counts.values()], clip_norm,
                        noise_multiplier, rng)


@dataclass
class SecureRounds:
    """Key agreement and masked aggregation for one federation."""

    send: Send
    inbox: Inbox
    stop: threading.Event
    timeout_s: float
    keys: dict[str, str] = field(default_factory=dict)
    key_exchange_bytes: int = 0

    def exchange(self, common: dict[str, Any], sites: list[str]) -> dict[str, str]:
        """Ask `sites` for their agreement keys (round 0); the sites left out, with why."""
        deadline = time.time() + self.timeout_s
        sent = self.send(RoundTask(kind="keys", round=0, sites=tuple(sites), deadline=deadline,
                                   **common), {})
        answers = self.inbox.collect(str(common["federation"]), 0, set(sites), deadline,
                                     self.stop, frozenset({"keys", "declined"}))
        self.key_exchange_bytes = sent + sum(a.size for a in answers.values())
        left: dict[str, str] = {}
        for site in sites:
            answer = answers.get(site)
            try:
                if answer is None or answer.update.kind != "keys":
                    raise MaskingError(answer.update.reason if answer else "no answer in time")
                check_public(answer.update.agreement_key)
                if answer.update.agreement_key in self.keys.values():
                    raise MaskingError("the same key as another site's")
                self.keys[site] = answer.update.agreement_key
            except MaskingError as error:
                left[site] = f"no secure-aggregation key: {error}"
        return left

    def task_keys(self, sites: list[str]) -> dict[str, str]:
        """The agreement keys a round task over `sites` carries."""
        return {site: self.keys[site] for site in sites}

    def aggregate(self, common: dict[str, Any], number: int, selected: list[str],
                  fits: dict[str, Answer], shapes: dict[str, tuple[int, ...]],
                  clip_norm: float, noise_multiplier: float
                  ) -> tuple[Arrays | None, float, dict[str, Any]]:
        """The round's noised average from the masked fits (None when refused), the noise
        std, and what to record (dropped sites whose masks were removed, the unmask step's
        bytes, a refusal)."""
        total: Words | None = None
        survivors: dict[str, int] = {}
        for site in sorted(fits):
            tensors = fits[site].tensors
            if {k: tuple(v.shape) for k, v in tensors.items()} != shapes or any(
                    v.dtype != np.uint64 for v in tensors.values()):
                # dropped: its self mask, never revealed, keeps its words masked
                log.warning("round %d: %s sent no well-formed masked update", number, site)
                continue
            total = add(total, {k: np.asarray(v, dtype=np.uint64) for k, v in tensors.items()})
            survivors[site] = fits[site].update.num_examples
        dropped = sorted(set(selected) - set(survivors))
        record: dict[str, Any] = {"secure_aggregation": True, "sites": sorted(survivors),
                                  "unmasked": dropped}
        if total is None or len(survivors) < 2:
            return None, 0.0, {**record, "refused": "fewer than two masked updates"}
        try:
            self_seeds, recovered = self._unmask(common, number, sorted(survivors), dropped,
                                                 record)
            average, std = unmasked_average(total, survivors, self_seeds, recovered, clip_norm,
                                            noise_multiplier)
        except MaskingError as error:
            return None, 0.0, {**record, "refused": str(error)}
        return dict(average), std, record

    def _unmask(self, common: dict[str, Any], number: int, survivors: list[str],
                dropped: list[str], record: dict[str, Any]
                ) -> tuple[list[bytes], list[tuple[str, str, bytes]]]:
        """The survivors' self-mask seeds and their (survivor, dropped site, seed) triples,
        asked for in an `unmask` task (its bytes and the answers' into `record`); MaskingError
        with the reason when a survivor does not reveal them."""
        deadline = time.time() + self.timeout_s
        sent = self.send(RoundTask(kind="unmask", round=number, sites=tuple(survivors),
                                   dropped=tuple(dropped), deadline=deadline,
                                   agreement_keys=self.task_keys(survivors + dropped),
                                   **common), {})
        answers = self.inbox.collect(str(common["federation"]), number, set(survivors),
                                     deadline, self.stop, frozenset({"unmask", "declined"}))
        record["bytes_unmask"] = sent + sum(a.size for a in answers.values())
        self_seeds: list[bytes] = []
        recovered: list[tuple[str, str, bytes]] = []
        for site in survivors:
            answer = answers.get(site)
            if answer is None or answer.update.kind != "unmask" or \
                    sorted(answer.update.seeds) != dropped:
                why = answer.update.reason if answer else "no answer in time"
                raise MaskingError(f"{site} did not reveal its seeds (self, and with "
                                   f"{dropped}): {why}")
            try:
                self_seeds.append(from_text(answer.update.self_seed))
                recovered += [(site, peer, from_text(answer.update.seeds[peer]))
                              for peer in dropped]
            except MaskingError as error:
                raise MaskingError(f"{site} sent a bad seed: {error}") from None
        return self_seeds, recovered
