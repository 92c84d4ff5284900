"""Three data owners for the federation tests: each site its own topic prefix, Redis prefix,
data and keys directory, running its own real ingest and governance (in threads) over its own
share of generated `transactions` with a different category mix; a coordinator on a second
embedded broker (the federation's own cluster)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from lepton.generators import transactions
from lepton.produce import publish
from services.federation.card import Outcome
from services.federation.config import FederationSettings
from services.federation.coordinator import Coordinator
from services.governance.config import GovernanceSettings
from services.governance.service import GovernanceService
from services.ingest.config import IngestSettings
from services.ingest.worker import IngestWorker
from services.trainer.config import TrainerSettings
from services.trainer.site import FederatedSite
from services.trainer.site_rounds import SiteRounds
from shared.allowlist import AllowList
from shared.config import LeptonSettings
from shared.events import Envelope
from shared.federation import TASK_KINDS, RoundTask, decode
from shared.kafka import ensure_topics
from shared.lifecycle import parent_death
from shared.principals import Principal, principals_dir
from shared.readiness import ready_path
from shared.topics import Topics
from tests.conftest import REDIS_URL
from tests.helpers import read_topic

SITES = ("site-a", "site-b", "site-c")
# each site mostly sees its own merchants (non-IID): c gets the risky, fraud-heavy ones
HOME = {"grocery": 0, "fuel": 0, "health": 0, "restaurants": 1, "online_retail": 1,
        "travel": 2, "electronics": 2, "entertainment": 2, "jewelry": 2, "gambling": 2}
EVENTS = 18_000


def split_events(count: int = EVENTS, seed: int = 11) -> dict[str, list[Envelope]]:
    """Generated transactions (one per customer) dealt to the sites: 70 % to the home site of
    their merchant category, the rest to another site."""
    rng = random.Random(5)
    shares: dict[str, list[Envelope]] = {site: [] for site in SITES}
    for index, env in enumerate(transactions(count, seed=seed, customers=count)):
        customer = f"cust-{index:06d}"  # one transaction per customer, identifiers unique
        env = env.model_copy(update={"subject_id": customer, "payload": {
            **env.payload, "customer_id": customer, "card_number": f"4{index:015d}",
            "email": f"card.holder{index}@example.com"}})
        home = HOME[str(env.payload["merchant_category"])]
        site = home if rng.random() < 0.7 else rng.choice([i for i in range(3) if i != home])
        shares[SITES[site]].append(env)
    return shares


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A second embedded broker: the federation's own cluster."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bootstrap"
    with (folder / "broker.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "lepton", "broker", "--bootstrap-file",
                                 str(path)], stdout=subprocess.DEVNULL, stderr=log,
                                preexec_fn=parent_death())
    deadline = time.monotonic() + 30
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the federation broker did not start")
        time.sleep(0.05)
    return proc, path.read_text().strip()


@dataclass
class Site:
    """One data owner: its settings, data and running ingest + governance."""

    name: str
    common: dict[str, Any]
    events: list[Envelope]
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def settings(self) -> LeptonSettings:
        """Common settings of this site."""
        return LeptonSettings(**self.common)

    def trainer(self, world: World, **overrides: Any) -> TrainerSettings:
        """The site's trainer in federated-site mode."""
        return TrainerSettings(**{
            **self.common, "trainer_dataset": "transactions",
            "trainer_federation_site": self.name,
            "trainer_federation_bootstrap": world.federation_bootstrap,
            "trainer_federation_topic_prefix": world.coordinator.topic_prefix,
            "trainer_federation_keys_dir": principals_dir(world.coordinator),
            "trainer_charge_timeout_s": 60.0, **overrides})

    def env(self, world: World) -> dict[str, str]:
        """The site trainer's environment (for a subprocess)."""
        settings = self.trainer(world)
        return {"LEPTON_KAFKA_BOOTSTRAP": str(settings.kafka_bootstrap),
                  "LEPTON_TOPIC_PREFIX": settings.topic_prefix,
                  "LEPTON_REDIS_URL": settings.redis_url,
                  "LEPTON_REDIS_PREFIX": settings.redis_prefix,
                  "LEPTON_DATA_DIR": str(settings.data_dir),
                  "LEPTON_TRAINER_DATASET": "transactions",
                  "LEPTON_TRAINER_FEDERATION_SITE": self.name,
                  "LEPTON_TRAINER_FEDERATION_BOOTSTRAP": world.federation_bootstrap,
                  "LEPTON_TRAINER_FEDERATION_TOPIC_PREFIX": world.coordinator.topic_prefix,
                  "LEPTON_TRAINER_FEDERATION_KEYS_DIR": str(principals_dir(world.coordinator)),
                  "LEPTON_LOG_FORMAT": "text"}

    def run(self, target: Callable[[], Any]) -> None:
        """Run `target` in a daemon thread until the site stops."""
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self.threads.append(thread)


@dataclass
class World:
    """The sites and the coordinator's settings."""

    sites: dict[str, Site]
    coordinator: FederationSettings
    federation_bootstrap: str
    prefixes: list[str]

    def topics_bytes(self, settings: LeptonSettings) -> bytes:
        """Every record (key, value, headers) of every topic under `settings`' prefix."""
        chunks: list[bytes] = []
        for topic in Topics(settings.topic_prefix).all():
            for record in read_topic(settings, topic, idle=1.0, committed_only=False):
                chunks += [record.key or b"", record.value,
                           *(k.encode() + v for k, v in record.headers.items())]
        return b"\n".join(chunks)


def make_world(broker: str, folder: Path) -> Iterator[World]:
    """Sites with their pipelines done (every event governed), and the coordinator's settings;
    stops everything and deletes the Redis keys afterwards."""
    uid = uuid.uuid4().hex[:8]
    fed_proc, fed_bootstrap = start_broker(folder / "federation-broker")
    coordinator = FederationSettings(
        kafka_bootstrap=fed_bootstrap, topic_prefix=f"t{uid}-fed.", redis_url=REDIS_URL,
        redis_prefix=f"test:{uid}:fed:", data_dir=folder / "coordinator",
        federation_sites=SITES, federation_dataset="transactions", federation_min_sites=2,
        federation_round_timeout_s=60.0)
    Principal.load(coordinator, "federation")
    coordinator.sites_path().mkdir(parents=True, exist_ok=True)
    ensure_topics(coordinator, Topics(coordinator.topic_prefix).all())
    sites: dict[str, Site] = {}
    shares = split_events()
    for name in SITES:
        common = {"kafka_bootstrap": broker, "topic_prefix": f"t{uid}-{name}.",
                  "redis_url": REDIS_URL, "redis_prefix": f"test:{uid}:{name}:",
                  "data_dir": folder / name}
        site = Site(name, common, shares[name])
        ensure_topics(site.settings, Topics(site.settings.topic_prefix).all())
        trainer_key = Principal.load(site.settings, "trainer")
        shutil.copy(principals_dir(site.settings) / "trainer.pub",
                    coordinator.sites_path() / f"{name}.pub")
        assert trainer_key.key_id
        ingest = IngestSettings(**common, ingest_instance=f"{name}-ingest")
        governance = GovernanceSettings(**common, governance_fsync=False)
        site.run(lambda i=ingest, s=site.stop: IngestWorker(i, s).run())
        site.run(lambda g=governance, s=site.stop: GovernanceService(g, s, None).run())
        publish(site.settings, site.events, total=len(site.events), show_progress=False)
        sites[name] = site
    world = World(sites, coordinator, fed_bootstrap,
                  [f"test:{uid}:{n}:" for n in (*SITES, "fed")])
    try:
        for site in sites.values():
            governed = read_topic(site.settings, Topics(site.settings.topic_prefix).governed,
                                  expect=len(site.events), timeout=240)
            assert len(governed) == len(site.events), (site.name, len(governed))
        yield world
    finally:
        for site in sites.values():
            site.stop.set()
        for site in sites.values():
            for thread in site.threads:
                thread.join(30)
        fed_proc.send_signal(signal.SIGTERM)
        fed_proc.wait(10)
        client = redis.Redis.from_url(REDIS_URL)
        for prefix in world.prefixes:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        client.close()


def run_sites(world: World, names: tuple[str, ...],
              rounds: type[SiteRounds] | None = None) -> tuple[threading.Event, list[Any]]:
    """Run these sites' trainers in site mode on threads (with `rounds` in place of their
    SiteRounds, e.g. a recording subclass); (their stop event, their threads)."""
    stop = threading.Event()
    threads = []
    for name in names:
        site = FederatedSite(world.sites[name].trainer(world), stop)
        if rounds is not None:
            site.rounds = rounds(site.settings, site.spec, site.signer, site.producer, stop)
        thread = threading.Thread(target=site.run, daemon=True)
        thread.start()
        threads.append(thread)
    return stop, threads


def wait_for_task(world: World, check: Callable[[RoundTask], bool], timeout: float) -> None:
    """Wait until a round task on the federation's topic satisfies `check`."""
    settings = world.coordinator
    topic = Topics(settings.topic_prefix).federation_rounds
    allow = AllowList(principals_dir(settings), {"federation": TASK_KINDS})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in read_topic(settings, topic, idle=0.3, timeout=5):
            message, _, _ = decode(record.value, list(record.headers.items()), allow, RoundTask)
            if check(message):
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing on {topic} matched in {timeout} s")


def federate(world: World, settings: FederationSettings, federation: str,
             rounds: type[SiteRounds] | None = None) -> Outcome:
    """One federation over all three sites (their trainers on threads); the outcome."""
    stop, threads = run_sites(world, SITES, rounds)
    try:
        return Coordinator(settings, threading.Event()).federate(federation)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)


def federate_killing_site_c(world: World, settings: FederationSettings, federation: str,
                            log: Path, rounds: type[SiteRounds] | None = None,
                            last_answer: str = "fit",
                            frozen: threading.Event | None = None) -> Outcome:
    """Federate with site-a and site-b on threads and site-c as a real trainer process, which
    is frozen once it gave its `last_answer` of round 1 (then `frozen` is set) and killed
    while round 2 runs; the outcome."""
    stop, threads = run_sites(world, ("site-a", "site-b"), rounds)
    with log.open("wb") as out:
        dying = subprocess.Popen([sys.executable, "-m", "services.trainer"],
                                 env={**os.environ, **world.sites["site-c"].env(world)},
                                 stdout=out, stderr=out, preexec_fn=parent_death())
    ready = ready_path(world.sites["site-c"].settings, "trainer")
    deadline = time.monotonic() + 120
    while not ready.exists() or int(ready.read_text()) != dying.pid:
        assert time.monotonic() < deadline and dying.poll() is None, log.read_text()[-2000:]
        time.sleep(0.05)
    outcome_box: list[Outcome] = []
    coordinator = threading.Thread(target=lambda: outcome_box.append(
        Coordinator(settings, threading.Event()).federate(federation)), daemon=True)
    try:
        coordinator.start()
        # freeze site-c once it answered round 1 (its log says so); kill it while round 2 runs
        deadline = time.monotonic() + 180
        while f"answered round 1 ({last_answer}".encode() not in log.read_bytes():
            assert time.monotonic() < deadline and dying.poll() is None, log.read_text()[-2000:]
            time.sleep(0.005)
        dying.send_signal(signal.SIGSTOP)
        if frozen is not None:
            frozen.set()
        wait_for_task(world, lambda t: (t.federation, t.round) == (federation, 2), 60)
        dying.kill()
        coordinator.join(240)
        assert not coordinator.is_alive()
    finally:
        stop.set()
        dying.kill()
        dying.wait(10)
        for thread in threads:
            thread.join(30)
    return outcome_box[0]
