"""Secure aggregation's math (shared/secagg.py, services/federation/secure.py) and a site's
masking (services/trainer/site_secure.py): pairwise masks of 3-5 sites cancel exactly in the
sum and the self masks go with the self seeds; with a site dropped and the survivors' seeds
recovered the result is the plain weighted average of the survivors (FedAvg) within
quantization error, and the dropped site's masked update, read late, stays masked by its self
mask; one masked update looks uniform and uncorrelated with the plain one; seeds are symmetric
and differ per round and federation; fewer than two survivors, a sum longer than the clip bound
allows (a seed left out or wrong, an unclipped update) and an unusable key are refused; a site
reveals seeds only for a round it masked, with exactly that round's sites; a survivor lost
before the unmask in a round where another site dropped before its update has its self seed and
its pairwise seed with the dropped site rebuilt from a majority's shares (five sites), and the
others open shares of pairwise seeds with dropped sites only."""

from __future__ import annotations

import time

import numpy as np
import pytest

from services.federation.aggregate import fedavg
from services.federation.secure import rebuilt_seeds, unmasked_average
from services.trainer.site_secure import SiteMasking
from shared.federation import RoundTask, SiteUpdate
from shared.secagg import (
    SCALE,
    MaskingError,
    Words,
    add,
    check_public,
    combine_seed,
    dequantize,
    from_text,
    mask,
    new_key,
    new_seed,
    open_share,
    pair_seed,
    public_text,
    quantize,
    remove_masks,
    seal_share,
    seed_text,
    split_seed,
    threshold,
)

SHAPES = {"layers.0.weight": (8, 5), "layers.0.bias": (8,), "layers.1.weight": (1, 8)}


def _update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    update = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}
    size = float(np.sqrt(sum(np.sum(np.square(v, dtype=np.float64)) for v in update.values())))
    return {k: (v * min(1.0, 1.0 / size)).astype(np.float32) for k, v in update.items()}


def _sites(count: int) -> tuple[list[str], dict[str, object], dict[str, str]]:
    names = [f"site-{chr(ord('a') + i)}" for i in range(count)]
    keys = {n: new_key() for n in names}
    return names, keys, {n: public_text(k) for n, k in keys.items()}  # type: ignore[arg-type]


def _masked(names: list[str], keys: dict[str, object], public: dict[str, str],
            updates: dict[str, dict[str, np.ndarray]], counts: dict[str, int],
            round_: int = 1) -> tuple[dict[str, Words], dict[str, bytes]]:
    out, self_seeds = {}, {}
    for own in names:
        seeds = {peer: pair_seed(keys[own], own, peer, public[peer], "fed-1",  # type: ignore
                                 round_) for peer in names if peer != own}
        self_seeds[own] = new_seed()
        out[own] = mask(quantize(updates[own], counts[own], len(names)), own, seeds,
                        self_seeds[own])
    return out, self_seeds


@pytest.mark.parametrize("count", [3, 4, 5])
def test_masks_cancel_in_the_sum(count: int) -> None:
    names, keys, public = _sites(count)
    updates = {n: _update(i) for i, n in enumerate(names)}
    counts = {n: 100 * (i + 1) for i, n in enumerate(names)}
    masked, self_seeds = _masked(names, keys, public, updates, counts)
    total = plain = None
    for name in names:
        total = add(total, masked[name])
        plain = add(plain, quantize(updates[name], counts[name], count))
    assert total is not None and plain is not None
    unmasked = remove_masks(total, self_seeds.values(), [])
    for name in SHAPES:  # the pairwise masks cancel; the self masks leave with their seeds
        assert not np.array_equal(total[name], plain[name])
        assert np.array_equal(unmasked[name], plain[name])
    average, std = unmasked_average(total, counts, list(self_seeds.values()), [],
                                    clip_norm=1.0, noise_multiplier=0.0)
    expected, _ = fedavg([(updates[n], counts[n]) for n in names], 1.0, 0.0)
    assert std == 0.0
    for name in SHAPES:
        assert np.allclose(average[name], expected[name], atol=1e-6)


def test_a_dropped_site_is_unmasked_from_the_survivors_seeds() -> None:
    names, keys, public = _sites(4)
    updates = {n: _update(10 + i) for i, n in enumerate(names)}
    counts = {n: 50 + 70 * i for i, n in enumerate(names)}
    masked, self_seeds = _masked(names, keys, public, updates, counts, round_=3)
    survivors, dropped = names[:1] + names[2:], names[1]
    total = None
    for name in survivors:
        total = add(total, masked[name])
    assert total is not None
    recovered = [(s, dropped, pair_seed(keys[s], s, dropped, public[dropped],  # type: ignore
                                        "fed-1", 3)) for s in survivors]
    alive = {s: counts[s] for s in survivors}
    own = [self_seeds[s] for s in survivors]
    expected, _ = fedavg([(updates[s], counts[s]) for s in survivors], 1.0, 0.0)
    # the dropped site's masks left in, or one survivor's seed wrong: far beyond C·Σn, refused
    with pytest.raises(MaskingError, match="clip bound"):
        unmasked_average(total, alive, own, [], 1.0, 0.0)
    wrong = [*recovered[:-1], (recovered[-1][0], dropped, bytes(32))]
    with pytest.raises(MaskingError, match="clip bound"):
        unmasked_average(total, alive, own, wrong, 1.0, 0.0)
    average, _ = unmasked_average(total, alive, own, recovered, 1.0, 0.0)
    for name in SHAPES:  # quantization: at most 0.5 / 2^F per site, divided by the count
        assert np.max(np.abs(average[name] - expected[name])) < 1e-6
    # the dropped site's update read late: with the survivors' seeds the coordinator can take
    # its pairwise masks off, and what is left is still masked by its self mask
    late = remove_masks(masked[dropped], [], [(dropped, s, seed) for s, _, seed in recovered])
    plain = quantize(updates[dropped], counts[dropped], len(names))
    signed = np.concatenate([dequantize(late)[k].ravel() for k in sorted(SHAPES)])
    assert np.median(np.abs(signed)) > 1e9 * counts[dropped]  # the plain values are below 1
    opened = remove_masks(late, [self_seeds[dropped]], [])  # only its self seed would open it
    assert all(np.array_equal(opened[k], plain[k]) for k in SHAPES)
    # the server's noise is fedavg's: std z·C·max weight
    _, std = unmasked_average(total, alive, own, recovered, 2.0, 0.5,
                              np.random.default_rng(0))
    assert std == pytest.approx(0.5 * 2.0 * max(alive.values()) / sum(alive.values()))


def test_one_masked_update_tells_nothing_of_the_plain_one() -> None:
    names, keys, public = _sites(3)
    # 10,000 values: were the masked words independent of the plain ones, their correlation's
    # std would be 0.01 and the top bit's mean's 0.005, so the bounds below are 5σ and 10σ
    rng = np.random.default_rng(7)
    updates = {n: {"w": rng.normal(0, 0.01, (100, 100)).astype(np.float32)} for n in names}
    counts = dict.fromkeys(names, 1000)
    masked = _masked(names, keys, public, updates, counts)[0]["site-a"]["w"].ravel()
    plain = updates["site-a"]["w"].ravel()
    signed = masked.view(np.int64).astype(np.float64) / SCALE / 1000
    assert np.median(np.abs(signed)) > 1e9  # the plain values are below 1
    assert abs(np.corrcoef(signed, plain)[0, 1]) < 0.05
    # uniform words: the top bit is set half the time
    assert 0.45 < float(np.mean(masked >> np.uint64(63))) < 0.55


def test_seeds_are_symmetric_and_differ_per_round_and_federation() -> None:
    a, b = new_key(), new_key()
    pa, pb = public_text(a), public_text(b)
    seed = pair_seed(a, "site-a", "site-b", pb, "fed-1", 1)
    assert seed == pair_seed(b, "site-b", "site-a", pa, "fed-1", 1)
    assert len(seed) == 32
    assert seed != pair_seed(a, "site-a", "site-b", pb, "fed-1", 2)
    assert seed != pair_seed(a, "site-a", "site-b", pb, "fed-2", 1)
    with pytest.raises(MaskingError):
        pair_seed(a, "site-a", "site-a", pa, "fed-1", 1)
    with pytest.raises(MaskingError):
        from_text("not base64!")


def test_fewer_than_two_survivors_and_overflow_are_refused() -> None:
    names, keys, public = _sites(2)
    counts = dict.fromkeys(names, 10)
    masked, _ = _masked(names, keys, public, {n: _update(1) for n in names}, counts)
    with pytest.raises(MaskingError, match="fewer than two"):
        unmasked_average(masked["site-a"], {"site-a": 10}, [], [], 1.0, 0.0)
    with pytest.raises(MaskingError, match="overflows"):
        quantize({"w": np.array([1e9])}, 10**6, 3)
    with pytest.raises(MaskingError, match="shapes"):
        add(masked["site-a"], {"w": np.zeros(3, dtype=np.uint64)})
    # no recovered seeds: the sum is returned word for word
    unchanged = remove_masks(masked["site-a"], [], [])
    assert unchanged.keys() == masked["site-a"].keys()
    assert all(np.array_equal(unchanged[k], masked["site-a"][k]) for k in unchanged)


def _task(kind: str, round_: int, sites: tuple[str, ...], keys: dict[str, str],
          dropped: tuple[str, ...] = (), sealed: dict[str, dict[str, str]] | None = None
          ) -> RoundTask:
    """A round task; for an unmask, `sealed` (sender → recipient → share, the fit answers'
    shares) is forwarded to the survivors as the coordinator does."""
    forwarded = {to: {sender: shares[to] for sender, shares in (sealed or {}).items()
                      if sender in sites and sender != to} for to in sites}
    return RoundTask(federation="fed-1", model="m", dataset="transactions", spec_hash="ab",
                     round=round_, rounds=3, kind=kind, sites=sites,  # type: ignore[arg-type]
                     deadline=time.time() + 60, architecture={}, feature_transform={},
                     local_epochs=0.5, minibatch=32, learning_rate=1.0, clip_norm=1.0,
                     epsilon=1.0, agreement_keys=keys, dropped=dropped,
                     sealed_shares=forwarded if kind == "unmask" else {})


def test_a_site_masks_and_reveals_only_seeds_with_dropped_sites() -> None:
    sites = {n: SiteMasking(n) for n in ("site-a", "site-b", "site-c")}
    names = tuple(sites)
    keys = {n: m.announce(_task("keys", 0, names, {})).agreement_key for n, m in sites.items()}
    fit = _task("fit", 1, names, keys)
    updates = {n: _update(i) for i, n in enumerate(names)}
    total = None
    sealed = {}
    for name, masking in sites.items():
        answer = SiteUpdate(federation="fed-1", round=1, site=name, kind="fit",
                            num_examples=100, update_norm=0.5)
        sent, tensors = masking.mask(fit, answer, updates[name])
        assert sent.update_norm is None and all(v.dtype == np.uint64 for v in tensors.values())
        assert set(sent.sealed_shares) == set(names) - {name}
        sealed[name] = sent.sealed_shares
        if name != "site-c":
            total = add(total, tensors)
    unmask = _task("unmask", 1, ("site-a", "site-b"), keys, ("site-c",), sealed)
    answers = {n: sites[n].unmask(unmask) for n in ("site-a", "site-b")}
    assert all(sorted(a.seeds) == ["site-c"] for a in answers.values())
    # shares only of the other survivor's self seed, never of the dropped site's
    assert {n: sorted(a.shares) for n, a in answers.items()} == {"site-a": ["site-b"],
                                                                 "site-b": ["site-a"]}
    assert total is not None
    recovered = [(n, "site-c", from_text(a.seeds["site-c"])) for n, a in answers.items()]
    own = [from_text(a.self_seed) for a in answers.values()]
    average, _ = unmasked_average(total, {"site-a": 100, "site-b": 100}, own, recovered,
                                  1.0, 0.0)
    expected, _ = fedavg([(updates["site-a"], 100), (updates["site-b"], 100)], 1.0, 0.0)
    assert all(np.allclose(average[k], expected[k], atol=1e-6) for k in SHAPES)
    # a survivor list that is not the round's sites, another round, a lost key: refused
    two = {n: keys[n] for n in ("site-a", "site-b")}
    with pytest.raises(ValueError, match="not that round's sites"):
        sites["site-a"].unmask(_task("unmask", 1, ("site-a", "site-b"), two))
    with pytest.raises(ValueError, match="not that round's sites"):  # a site both ways
        sites["site-a"].unmask(_task("unmask", 1, names, keys, ("site-c",)))
    with pytest.raises(ValueError, match="at least two"):
        sites["site-a"].unmask(_task("unmask", 1, ("site-a",), keys, ("site-b", "site-c")))
    with pytest.raises(ValueError, match="no masked update"):
        sites["site-a"].unmask(_task("unmask", 2, ("site-a", "site-b"), keys, ("site-c",)))
    with pytest.raises(ValueError, match="a share from every other survivor"):
        sites["site-a"].unmask(_task("unmask", 1, ("site-a", "site-b"), keys, ("site-c",)))
    swapped = {**sealed, "site-b": {"site-a": sealed["site-c"]["site-a"]}}  # not site-b's
    with pytest.raises(ValueError, match="does not open"):
        sites["site-a"].unmask(_task("unmask", 1, ("site-a", "site-b"), keys, ("site-c",),
                                     swapped))
    with pytest.raises(ValueError, match="lost"):
        SiteMasking("site-a").require(fit)


def test_an_unclipped_update_and_an_unusable_key_are_refused() -> None:
    names, keys, public = _sites(3)
    counts = dict.fromkeys(names, 10)
    updates = {n: _update(20 + i) for i, n in enumerate(names)}
    updates["site-b"] = {k: v * 4 for k, v in updates["site-b"].items()}  # norm ≈ 4 > C = 1
    masked, self_seeds = _masked(names, keys, public, updates, counts)
    total = None
    for name in names:
        total = add(total, masked[name])
    assert total is not None
    own = list(self_seeds.values())
    with pytest.raises(MaskingError, match="clip bound"):
        unmasked_average(total, counts, own, [], 1.0, 0.0)
    within, _ = unmasked_average(total, counts, own, [], 4.0, 0.0)  # a bound of 4 admits it
    expected, _ = fedavg([(updates[n], counts[n]) for n in names], 4.0, 0.0)
    assert all(np.allclose(within[k], expected[k], atol=1e-6) for k in SHAPES)
    # a low-order point as a public key would make every peer's agreement fail
    check_public(public["site-a"])
    with pytest.raises(MaskingError, match="unusable"):
        check_public(seed_text(bytes(32)))


def test_a_self_seed_is_rebuilt_from_a_majority_of_its_sealed_shares() -> None:
    names, keys, public = _sites(5)
    seed = new_seed()
    shares = split_seed(seed, names, "site-c")
    assert set(shares) == set(names) - {"site-c"} and threshold(5) == 3
    sealed = {peer: seal_share(keys["site-c"], "site-c", peer, public[peer],  # type: ignore
                               "fed-1", 4, share) for peer, share in shares.items()}
    opened = {peer: open_share(keys[peer], peer, "site-c", public["site-c"],  # type: ignore
                               "fed-1", 4, text) for peer, text in sealed.items()}
    assert opened == shares
    for three in (["site-a", "site-b", "site-d"], ["site-b", "site-d", "site-e"]):
        assert combine_seed([opened[p] for p in three], 5) == seed
    with pytest.raises(MaskingError, match="3 are needed"):
        combine_seed([opened["site-a"], opened["site-b"]], 5)
    with pytest.raises(MaskingError, match="3 are needed"):  # one share given twice
        combine_seed([opened["site-a"], opened["site-a"], opened["site-b"]], 5)
    # a share of another split in place of one of them gives another seed
    other = split_seed(new_seed(), names, "site-c")
    assert combine_seed([opened["site-a"], opened["site-b"], other["site-d"]], 5) != seed
    # only its recipient opens a share, and only for that federation and round
    for who, sender, federation, round_ in (("site-b", "site-c", "fed-1", 4),
                                            ("site-a", "site-b", "fed-1", 4),
                                            ("site-a", "site-c", "fed-2", 4),
                                            ("site-a", "site-c", "fed-1", 5)):
        with pytest.raises(MaskingError, match="does not open"):
            open_share(keys[who], who, sender, public[sender], federation,  # type: ignore
                       round_, sealed["site-a"])


def test_a_survivor_lost_before_the_unmask_is_unmasked_from_its_shares() -> None:
    sites = {n: SiteMasking(n) for n in ("site-a", "site-b", "site-c")}
    names = tuple(sites)
    keys = {n: m.announce(_task("keys", 0, names, {})).agreement_key for n, m in sites.items()}
    fit = _task("fit", 1, names, keys)
    updates = {n: _update(30 + i) for i, n in enumerate(names)}
    counts = {"site-a": 50, "site-b": 80, "site-c": 120}
    total, sealed = None, {}
    for name, masking in sites.items():
        answer = SiteUpdate(federation="fed-1", round=1, site=name, kind="fit",
                            num_examples=counts[name], update_norm=0.5)
        sent, tensors = masking.mask(fit, answer, updates[name])
        sealed[name] = sent.sealed_shares
        total = add(total, tensors)
    assert total is not None
    # all three updates are in the sum; site-c never answers the unmask
    unmask = _task("unmask", 1, names, keys, (), sealed)
    answers = {n: sites[n].unmask(unmask) for n in ("site-a", "site-b")}
    rebuilt = combine_seed([from_text(a.shares["site-c"], 36) for a in answers.values()], 3)
    own = [from_text(a.self_seed) for a in answers.values()] + [rebuilt]
    average, _ = unmasked_average(total, counts, own, [], 1.0, 0.0)
    expected, _ = fedavg([(updates[n], counts[n]) for n in names], 1.0, 0.0)
    assert all(np.allclose(average[k], expected[k], atol=1e-6) for k in SHAPES)
    # one share alone rebuilds nothing
    with pytest.raises(MaskingError, match="2 are needed"):
        combine_seed([from_text(answers["site-a"].shares["site-c"], 36)], 3)


def test_a_survivor_lost_in_a_round_with_a_dropped_site_is_unmasked_from_its_shares() -> None:
    names = ("site-a", "site-b", "site-c", "site-d", "site-e")
    sites = {n: SiteMasking(n) for n in names}
    keys = {n: m.announce(_task("keys", 0, names, {})).agreement_key for n, m in sites.items()}
    fit = _task("fit", 1, names, keys)
    updates = {n: _update(40 + i) for i, n in enumerate(names)}
    counts = {"site-a": 50, "site-b": 80, "site-c": 120, "site-d": 70}
    total, sealed = None, {}
    for name in counts:  # site-e drops before its update
        answer = SiteUpdate(federation="fed-1", round=1, site=name, kind="fit",
                            num_examples=counts[name], update_norm=0.5)
        sent, tensors = sites[name].mask(fit, answer, updates[name])
        sealed[name] = sent.sealed_shares
        total = add(total, tensors)
    assert total is not None
    # site-d's update is in the sum, but it never answers the unmask
    unmask = _task("unmask", 1, tuple(counts), keys, ("site-e",), sealed)
    answers = {n: sites[n].unmask(unmask) for n in ("site-a", "site-b", "site-c")}
    # shares of pairwise seeds only with the dropped site, never between two survivors
    assert {n: {p: sorted(s) for p, s in a.pair_shares.items()} for n, a in answers.items()} == {
        n: {p: ["site-e"] for p in counts if p != n} for n in answers}
    own, pairs = rebuilt_seeds({"site-d": "no answer in time"}, list(answers.values()),
                               ["site-e"], len(names))
    assert [(survivor, gone) for survivor, gone, _ in pairs] == [("site-d", "site-e")]
    revealed = [from_text(a.self_seed) for a in answers.values()]
    recovered = [(n, "site-e", from_text(a.seeds["site-e"])) for n, a in answers.items()]
    average, _ = unmasked_average(total, counts, revealed + own, recovered + pairs, 1.0, 0.0)
    expected, _ = fedavg([(updates[n], counts[n]) for n in counts], 1.0, 0.0)
    assert all(np.allclose(average[k], expected[k], atol=1e-6) for k in SHAPES)
    # without site-d's pairwise seed with site-e the sum stays masked: refused, not wrong
    with pytest.raises(MaskingError, match="clip bound"):
        unmasked_average(total, counts, revealed + own, recovered, 1.0, 0.0)
    # two answers hold two shares where a majority of five sites (three) is needed
    with pytest.raises(MaskingError, match="site-d did not reveal its seeds"):
        rebuilt_seeds({"site-d": "lost"}, [answers["site-a"], answers["site-b"]], ["site-e"],
                      len(names))
