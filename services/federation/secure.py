"""The coordinator's side of secure aggregation (LEPTON_FEDERATION_SECURE_AGGREGATION; the masking
math is shared/secagg.py): the key exchange before round 1, and each round's sum of double-masked
updates, with the survivors' self masks and the dropped sites' pairwise masks removed from seeds
the survivors reveal or rebuild.

Consumes the sites' `keys` answers (round 0: each site's X25519 public key, inside its signed
SiteUpdate), their masked fit answers (uint64 fixed-point value x sample count, plus a self mask
and pairwise masks, and Shamir shares of the self seed and pairwise seeds sealed to each peer) and
their `unmask` answers (the survivor's own self-mask seed, its seeds with the dropped sites only,
and the shares it opened of the other survivors' self seeds and of their seeds with the dropped
sites); produces `keys` and `unmask` tasks on `federation.rounds` (an unmask task forwards each
sealed share to its recipient) and the round's sample-weighted average plus the server's Gaussian
noise exactly as aggregate.fedavg adds it. It never holds one site's update, only the sum of at
least two: a dropped site's self seed is never asked for, nor are shares of it, so its masked
update stays masked even if it is read after the unmask. A survivor lost before it answers the
unmask has its self seed, and its pairwise seeds with the sites that dropped before their updates,
rebuilt from a majority's shares (secagg.threshold). A round is refused (no aggregate; the caller
records it and keeps the weights) when fewer than two sites' masked updates came, a lost survivor's
seeds cannot be rebuilt (fewer than a majority's shares), or the unmasked sum is longer than the
sites' clip bound allows (a wrong seed or share, or an unclipped update). It cannot clip a single
update (it never sees one): it relies on the sites'.
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
from shared.federation import Arrays, RoundTask, SiteUpdate
from shared.secagg import (
    FRACTION_BITS,
    SHARE_BYTES,
    MaskingError,
    Words,
    add,
    check_public,
    combine_seed,
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


def _revealed(answers: Mapping[str, Answer], survivors: list[str], dropped: list[str]
              ) -> tuple[list[bytes], list[tuple[str, str, bytes]], list[SiteUpdate],
                         dict[str, str]]:
    """From the unmask answers: the self seeds and (survivor, dropped site, seed) triples the
    survivors revealed, their answers, and the survivors that revealed nothing usable (why)."""
    self_seeds: list[bytes] = []
    recovered: list[tuple[str, str, bytes]] = []
    revealed: list[SiteUpdate] = []
    lost: dict[str, str] = {}
    for site in survivors:
        answer = answers.get(site)
        try:
            if answer is None or answer.update.kind != "unmask" or \
                    sorted(answer.update.seeds) != dropped:
                raise MaskingError(answer.update.reason if answer else "no answer in time")
            own = from_text(answer.update.self_seed)
            pairs = [(site, peer, from_text(answer.update.seeds[peer])) for peer in dropped]
        except MaskingError as error:
            lost[site] = str(error)
            continue
        self_seeds.append(own)
        recovered += pairs
        revealed.append(answer.update)
    return self_seeds, recovered, revealed, lost


def _share(text: str) -> list[bytes]:
    """An opened share as bytes; none when malformed (combine_seed counts what is left)."""
    try:
        return [from_text(text, SHARE_BYTES)]
    except MaskingError:
        return []


def rebuilt_seeds(lost: Mapping[str, str], revealed: list[SiteUpdate], dropped: list[str],
                  sites: int) -> tuple[list[bytes], list[tuple[str, str, bytes]]]:
    """The self seeds of the survivors that revealed nothing (`lost`, with why: their updates
    are in the sum) and their (survivor, dropped site, seed) triples, rebuilt from the shares
    the `revealed` answers opened; MaskingError naming the site when fewer than a majority of
    the round's `sites` opened them."""
    self_seeds: list[bytes] = []
    recovered: list[tuple[str, str, bytes]] = []
    for site, why in sorted(lost.items()):
        try:
            self_seeds.append(combine_seed(
                [raw for update in revealed for raw in _share(update.shares.get(site, ""))],
                sites))
            recovered += [(site, gone, combine_seed(
                [raw for update in revealed
                 for raw in _share(update.pair_shares.get(site, {}).get(gone, ""))], sites))
                for gone in dropped]
        except MaskingError as error:
            raise MaskingError(f"{site} did not reveal its seeds ({why}) and they cannot be "
                               f"rebuilt: {error}") from None
    return self_seeds, recovered


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
                    v.dtype != np.uint64 for v in tensors.values()) or set(
                    fits[site].update.sealed_shares) != set(selected) - {site}:
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
            sealed = {site: fits[site].update.sealed_shares for site in survivors}
            self_seeds, recovered = self._unmask(common, number, selected, sealed, dropped,
                                                 record)
            average, std = unmasked_average(total, survivors, self_seeds, recovered, clip_norm,
                                            noise_multiplier)
        except MaskingError as error:
            return None, 0.0, {**record, "refused": str(error)}
        return dict(average), std, record

    def _unmask(self, common: dict[str, Any], number: int, selected: list[str],
                sealed: dict[str, dict[str, str]], dropped: list[str], record: dict[str, Any]
                ) -> tuple[list[bytes], list[tuple[str, str, bytes]]]:
        """Every survivor's self-mask seed (revealed, or rebuilt from the others' shares) and
        the (survivor, dropped site, seed) triples, asked for in an `unmask` task that forwards
        the survivors' `sealed` shares (its bytes, the answers' and the rebuilt sites into
        `record`); MaskingError with the reason when they cannot all be had."""
        survivors = sorted(sealed)
        deadline = time.time() + self.timeout_s
        forwarded = {to: {sender: shares[to] for sender, shares in sealed.items() if sender != to}
                     for to in survivors}
        sent = self.send(RoundTask(kind="unmask", round=number, sites=tuple(survivors),
                                   dropped=tuple(dropped), deadline=deadline,
                                   agreement_keys=self.task_keys(survivors + dropped),
                                   sealed_shares=forwarded, **common), {})
        answers = self.inbox.collect(str(common["federation"]), number, set(survivors),
                                     deadline, self.stop, frozenset({"unmask", "declined"}))
        record["bytes_unmask"] = sent + sum(a.size for a in answers.values())
        self_seeds, recovered, revealed, lost = _revealed(answers, survivors, dropped)
        own, pairs = rebuilt_seeds(lost, revealed, dropped, len(selected))
        if lost:
            record["rebuilt"] = sorted(lost)
        return self_seeds + own, recovered + pairs
