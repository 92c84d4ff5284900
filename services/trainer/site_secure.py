"""A federated site's side of secure aggregation (shared/secagg.py): its X25519 key pair per
federation and its self-mask seed per round (in memory only: neither leaves the process unless
it is revealed as below), its masked updates, and its pairwise seeds with dropped peers.

Consumes `keys`, `fit` (with `agreement_keys`) and `unmask` round tasks; produces a `keys`
answer (the raw public key), the masked fixed-point update of a fit answer in place of the
clipped floats (the sample count stays in clear, the update's norm is not sent) with Shamir
shares of its self seed and of its pairwise seeds sealed to each peer, and an `unmask` answer
with its self-mask seed of the round, the seeds it shares with each dropped site, and the shares
it opened of the other survivors' self seeds and of their pairwise seeds with the dropped sites
(never with each other), only when the survivors and dropped sites the task names are exactly
that round's selected sites (with the same keys), at least two survive and it is one of them
(once per round: site.py answers each task once).
"""

from __future__ import annotations

from collections import OrderedDict

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from shared.federation import Arrays, RoundTask, SiteUpdate
from shared.secagg import (
    MaskingError,
    bundle_bytes,
    bundle_shares,
    mask,
    new_key,
    new_seed,
    open_share,
    pair_seed,
    public_text,
    quantize,
    seal_share,
    seed_text,
    unbundle,
)

KEPT_FEDERATIONS = 4


class SiteMasking:
    """The key pairs and masked rounds of the federations this site takes part in."""

    def __init__(self, site: str) -> None:
        self.site = site
        self.keys: OrderedDict[str, X25519PrivateKey] = OrderedDict()
        # (federation, round) → the round's agreement keys and this site's self-mask seed
        self.masked: dict[tuple[str, int], tuple[dict[str, str], bytes]] = {}

    def _key(self, federation: str) -> X25519PrivateKey:
        key = self.keys.get(federation)
        if key is None:
            key = self.keys[federation] = new_key()
            while len(self.keys) > KEPT_FEDERATIONS:
                gone, _ = self.keys.popitem(last=False)
                self.masked = {k: v for k, v in self.masked.items() if k[0] != gone}
        return key

    def announce(self, task: RoundTask) -> SiteUpdate:
        """The answer to a `keys` task: this site's public key for the federation."""
        return SiteUpdate(federation=task.federation, round=task.round, site=self.site,
                          kind="keys", num_examples=0,
                          agreement_key=public_text(self._key(task.federation)))

    def require(self, task: RoundTask) -> None:
        """Refuse (ValueError) a secure task whose key for this site is not this process's
        (the site restarted and lost its key) or that selects fewer than two sites."""
        key = self.keys.get(task.federation)
        if key is None or task.agreement_keys.get(self.site) != public_text(key):
            raise ValueError("secure aggregation: this site's agreement key is lost "
                             "(restarted since the key exchange)")
        if len(task.sites) < 2 or set(task.agreement_keys) != set(task.sites) | set(
                task.dropped):
            raise ValueError("secure aggregation needs the keys of at least two sites")

    def seeds(self, task: RoundTask, peers: tuple[str, ...]) -> dict[str, bytes]:
        """Pairwise seeds with `peers` for the task's round."""
        key = self.keys[task.federation]
        return {peer: pair_seed(key, self.site, peer, task.agreement_keys[peer],
                                task.federation, task.round) for peer in peers}

    def mask(self, task: RoundTask, update: SiteUpdate, tensors: Arrays
             ) -> tuple[SiteUpdate, Arrays]:
        """The fit answer with its clipped update replaced by the masked fixed-point one, and
        shares of its self seed and pairwise seeds sealed to each peer."""
        self.require(task)
        peers = tuple(s for s in task.sites if s != self.site)
        words = quantize(tensors, update.num_examples, len(task.sites))
        self_seed = new_seed()
        seeds = self.seeds(task, peers)
        masked = mask(words, self.site, seeds, self_seed)
        key = self.keys[task.federation]
        sealed = {peer: seal_share(key, self.site, peer, task.agreement_keys[peer],
                                   task.federation, task.round, bundle) for peer, bundle in
                  bundle_shares(self_seed, seeds, task.sites, self.site).items()}
        self.masked[(task.federation, task.round)] = (dict(task.agreement_keys), self_seed)
        return update.model_copy(update={"update_norm": None, "sealed_shares": sealed}), dict(
            masked)

    def unmask(self, task: RoundTask) -> SiteUpdate:
        """This site's self-mask seed, the seeds shared with the round's dropped sites and the
        opened shares of the other survivors' self seeds and of their seeds with the dropped
        sites (ValueError if the task is not
        consistent with the round this site masked, or a share does not open)."""
        self.require(task)
        masked = self.masked.get((task.federation, task.round))
        if masked is None:
            raise ValueError("unmask: this site sent no masked update in that round")
        selected, self_seed = masked
        survivors, dropped = set(task.sites), set(task.dropped)
        if self.site not in survivors or survivors & dropped or \
                task.agreement_keys != selected:
            raise ValueError("unmask: survivors and dropped sites are not that round's sites")
        seeds = self.seeds(task, tuple(sorted(dropped)))
        sealed = task.sealed_shares.get(self.site, {})
        if set(sealed) != survivors - {self.site}:
            raise ValueError("unmask: the task does not carry a share from every other survivor")
        key = self.keys[task.federation]
        try:
            bundles = {peer: unbundle(open_share(
                key, self.site, peer, selected[peer], task.federation, task.round, text,
                bundle_bytes(len(selected))), tuple(selected), peer)
                for peer, text in sealed.items()}
        except MaskingError as error:
            raise ValueError(f"unmask: {error}") from None
        # shares of a peer's pairwise seeds only with the dropped sites, never between survivors
        return SiteUpdate(
            federation=task.federation, round=task.round, site=self.site, kind="unmask",
            num_examples=0, self_seed=seed_text(self_seed),
            seeds={peer: seed_text(seed) for peer, seed in seeds.items()},
            shares={peer: seed_text(own) for peer, (own, _) in bundles.items()},
            pair_shares={peer: {gone: seed_text(pairs[gone]) for gone in sorted(dropped)}
                         for peer, (_, pairs) in bundles.items() if dropped})
