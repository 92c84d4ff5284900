"""Federated training: FedAvg rounds per minute and bytes per round against the number of
sites, and the private hyper-parameter search's wall time and ε.

Federation: K sites (K = 1..4), each with its own topic prefix, Redis prefix, keys and a real
governance service (it answers the site's release charge), and 3,000 governed `transactions`
(published with governance's MAC, so ingest is not part of the measurement); the sites' trainers
run in site mode in this process (threads), the coordinator too. Round 1 includes each site's
snapshot read and its release charge; the steady rate is over rounds 2..R. For K ≥ 2 each
federation runs twice in the same run: plain FedAvg, then with secure aggregation (double
masking: a key-exchange step before round 1, whose bytes are a column of their own, masked
fixed-point updates with the self seed's sealed Shamir shares, and an unmask step in every
round).

Tuning: `lepton tune`'s study (run_tune) on governed breast_cancer with a governance service,
N trials: wall time, trials charged, the study's ε and the best value against the defaults.

Run `python bench/federation_bench.py [--rounds 5] [--sites 1,2,3,4] [--trials 10]`; prints
markdown. Starts its own embedded broker; Redis at LEPTON_REDIS_URL (default local db 15).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.lifecycle import parent_death  # noqa: E402
from tests.unit.trainer.governed import publish_governed  # noqa: E402

ROWS_PER_SITE = 3000


def _broker(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    path = folder / "bootstrap"
    proc = subprocess.Popen([sys.executable, "-m", "lepton", "broker", "--bootstrap-file",
                             str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=parent_death())
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, path.read_text().strip()


def _federation(bootstrap: str, folder: Path, sites: int, rounds: int, redis_url: str,
                prefixes: list[str], secure: bool = False) -> dict[str, Any]:
    from lepton.generators import transactions
    from services.federation.config import FederationSettings
    from services.federation.coordinator import Coordinator
    from services.governance.config import GovernanceSettings
    from services.governance.service import GovernanceService
    from services.trainer.config import TrainerSettings
    from services.trainer.site import FederatedSite
    from shared.kafka import ensure_topics
    from shared.principals import Principal, principals_dir
    from shared.topics import Topics

    uid = uuid.uuid4().hex[:6]
    names = [f"site-{i}" for i in range(sites)]
    coordinator = FederationSettings(
        kafka_bootstrap=bootstrap, topic_prefix=f"b{uid}-fed.", redis_url=redis_url,
        redis_prefix=f"bench:{uid}:fed:", data_dir=folder / uid / "fed",
        federation_sites=tuple(names), federation_min_sites=1, federation_rounds=rounds,
        federation_round_timeout_s=120.0, federation_secure_aggregation=secure)
    prefixes.append(coordinator.redis_prefix)
    Principal.load(coordinator, "federation")
    coordinator.sites_path().mkdir(parents=True, exist_ok=True)
    ensure_topics(coordinator, Topics(coordinator.topic_prefix).all())
    stop = threading.Event()
    threads: list[threading.Thread] = []
    events = list(transactions(ROWS_PER_SITE * sites, seed=3, customers=ROWS_PER_SITE * sites * 4))
    trainers = []
    for index, name in enumerate(names):
        common = {"kafka_bootstrap": bootstrap, "topic_prefix": f"b{uid}-{name}.",
                  "redis_url": redis_url, "redis_prefix": f"bench:{uid}:{name}:",
                  "data_dir": folder / uid / name}
        prefixes.append(str(common["redis_prefix"]))
        governance = GovernanceSettings(**common, governance_fsync=False)
        ensure_topics(governance, Topics(governance.topic_prefix).all())
        Principal.load(governance, "trainer")
        shutil.copy(principals_dir(governance) / "trainer.pub",
                    coordinator.sites_path() / f"{name}.pub")
        share = events[index::sites]
        publish_governed(governance, [e.model_copy(update={"subject_id": f"{name}-{i}"})
                                       for i, e in enumerate(share)])
        thread = threading.Thread(target=GovernanceService(governance, stop, None).run,
                                  daemon=True)
        thread.start()
        threads.append(thread)
        trainers.append(TrainerSettings(
            **common, trainer_dataset="transactions", trainer_federation_site=name,
            trainer_federation_bootstrap=bootstrap,
            trainer_federation_topic_prefix=coordinator.topic_prefix,
            trainer_federation_keys_dir=principals_dir(coordinator)))
    for settings in trainers:
        thread = threading.Thread(target=FederatedSite(settings, stop).run, daemon=True)
        thread.start()
        threads.append(thread)
    began = time.monotonic()
    outcome = Coordinator(coordinator, threading.Event()).federate(f"bench-{uid}")
    total = time.monotonic() - began
    stop.set()
    for thread in threads:
        thread.join(30)
    card = outcome.card
    assert card is not None, outcome.reason
    seconds = [r["seconds"] for r in card.lineage["federation"]["rounds"]]
    return {"sites": sites, "secure": secure, "status": card.status, "first": seconds[0],
            "steady": 60 * (len(seconds) - 1) / sum(seconds[1:]) if seconds[1:] else None,
            "total": total,
            "bytes": card.training["bytes_per_round"][-1],
            "key_bytes": card.training["key_exchange_bytes"], "auc": card.metrics.get("roc_auc"),
            "epsilon": card.epsilon}


def _tuning(bootstrap: str, folder: Path, trials: int, redis_url: str,
            prefixes: list[str]) -> dict[str, Any]:
    from lepton.generators import breast_cancer
    from services.governance.config import GovernanceSettings
    from services.governance.service import GovernanceService
    from services.trainer.config import TrainerSettings
    from services.trainer.tune import run_tune
    from shared.kafka import ensure_topics
    from shared.topics import Topics

    uid = uuid.uuid4().hex[:6]
    common = {"kafka_bootstrap": bootstrap, "topic_prefix": f"b{uid}-bc.",
              "redis_url": redis_url, "redis_prefix": f"bench:{uid}:bc:",
              "data_dir": folder / uid / "bc"}
    prefixes.append(str(common["redis_prefix"]))
    governance = GovernanceSettings(**common, governance_fsync=False)
    ensure_topics(governance, Topics(governance.topic_prefix).all())
    publish_governed(governance, list(breast_cancer()))
    stop = threading.Event()
    thread = threading.Thread(target=GovernanceService(governance, stop, None).run, daemon=True)
    thread.start()
    try:
        began = time.monotonic()
        result = run_tune(TrainerSettings(**common, trainer_dataset="breast_cancer"), trials,
                          f"bench-{uid}")
        wall = time.monotonic() - began
    finally:
        stop.set()
        thread.join(30)
    return {"wall": wall, **result.to_dict()}


def main() -> None:
    """Measure the federation at each site count and one tuning study; print markdown."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sites", default="1,2,3,4")
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    import redis
    import torch

    torch.set_num_threads(1)
    redis_url = os.environ.get("LEPTON_REDIS_URL", "redis://127.0.0.1:6379/15")
    folder = Path(tempfile.mkdtemp(prefix="federation-bench-"))
    proc, bootstrap = _broker(folder)
    prefixes: list[str] = []
    try:
        rows = [_federation(bootstrap, folder, int(k), args.rounds, redis_url, prefixes, secure)
                for k in args.sites.split(",") for secure in (False, True)
                if int(k) >= 2 or not secure]
        tune = _tuning(bootstrap, folder, args.trials, redis_url, prefixes)
    finally:
        proc.terminate()
        proc.wait(10)
        client = redis.Redis.from_url(redis_url)
        for prefix in prefixes:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        shutil.rmtree(folder, ignore_errors=True)
    print("## Federated training (`bench/federation_bench.py`)\n")
    print(f"{args.rounds} FedAvg rounds, {ROWS_PER_SITE:,} governed transactions per site, "
          "sites and coordinator in one process on the embedded broker, each site with its "
          "own governance answering its release charge; defaults (local SGD, 0.5 epochs per "
          "round, minibatch 128, ε = 1 per site).\n")
    print("| sites | aggregation | round 1 s (snapshot + charge + train) | steady rounds/min | "
          "bytes per round | key exchange bytes | pooled ROC-AUC | card ε | whole federation s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        kind = "secure (masked)" if row["secure"] else "plain"
        keys = f"{row['key_bytes']:,}" if row["secure"] else "—"
        steady = "—" if row["steady"] is None else f"{row['steady']:.1f}"  # one round only
        print(f"| {row['sites']} | {kind} | {row['first']:.2f} | {steady} | "
              f"{row['bytes']:,} | {keys} | {row['auc']:.4f} | "
              f"{row['epsilon']:.3f} | {row['total']:.1f} |")
    print(f"\nTuning: `run_tune` on breast_cancer, {args.trials} trials: wall "
          f"{tune['wall']:.1f} s, {tune['trials']} trials charged ({tune['pruned']} pruned), "
          f"study ε {tune['epsilon']:.3f} (δ = 1e-5, RDP per-trial composition, budget 3.0), "
          f"best F1 {tune['best_value']:.4f} vs defaults {tune['default_value']:.4f}, "
          f"best {tune['best_params']}.")


if __name__ == "__main__":
    main()
