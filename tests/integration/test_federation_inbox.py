"""The coordinator's inbox on the embedded broker: a round's answers from the selected site
are collected; an answer to an earlier round (late), one signed by another site than it names,
an unsigned one, a forged one, one for another federation and one of a kind the round does not
expect (a `keys` answer while fits are collected) are dropped, each with a record;
the round ends at its deadline when a site never answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from services.federation.inbox import Inbox
from shared.allowlist import AllowList
from shared.config import LeptonSettings
from shared.federation import UPDATE_KINDS, SiteUpdate, encode
from shared.kafka import make_producer
from shared.principals import Principal, principals_dir
from shared.topics import Topics


def _site(tmp_path: Path, name: str) -> Principal:
    settings = LeptonSettings(data_dir=tmp_path / name)
    principal = Principal.load(settings, "trainer")
    (tmp_path / "sites").mkdir(exist_ok=True)
    (tmp_path / "sites" / f"{name}.pub").write_bytes(
        (principals_dir(settings) / "trainer.pub").read_bytes())
    return principal


def test_collects_the_round_and_records_what_it_drops(lepton_env: LeptonSettings,
                                                      tmp_path: Path) -> None:
    a, b = _site(tmp_path, "site-a"), _site(tmp_path, "site-b")
    inbox = Inbox(lepton_env, AllowList(tmp_path / "sites", dict.fromkeys(
        ("site-a", "site-b", "site-c"), UPDATE_KINDS)))
    producer = make_producer(lepton_env)
    topic = Topics(lepton_env.topic_prefix).federation_updates

    def send(update: SiteUpdate, signer: Principal, headers: bool = True) -> None:
        value, signed = encode(update, {"w": np.ones(3, np.float32)}, signer)
        producer.produce(topic, key=b"fed-1", value=value, headers=signed if headers else None)

    def fit(site: str, round_: int, federation: str = "fed-1") -> SiteUpdate:
        return SiteUpdate(federation=federation, round=round_, site=site, kind="fit",
                          num_examples=10)

    send(fit("site-b", 1), b)             # late: an answer to round 1 while round 2 runs
    send(fit("site-a", 2), b)             # signed by site-b, naming site-a
    send(fit("site-a", 2), a, headers=False)
    send(fit("site-a", 2, "fed-0"), a)    # another federation
    send(fit("site-a", 2).model_copy(update={"kind": "keys"}), a)  # not a fit or declined
    value, headers = encode(fit("site-a", 2), {}, a)
    producer.produce(topic, value=value[:-1] + b"x", headers=headers)  # forged
    send(fit("site-a", 2), a)
    producer.flush(10)
    began = time.time()
    try:
        answers = inbox.collect("fed-1", 2, {"site-a", "site-c"}, began + 4.0,
                                threading.Event(), frozenset({"fit", "declined"}))
    finally:
        inbox.close()
    assert time.time() - began >= 3.9  # site-c never answered: the deadline ends the round
    assert list(answers) == ["site-a"] and answers["site-a"].update == fit("site-a", 2)
    assert np.array_equal(answers["site-a"].tensors["w"], np.ones(3, np.float32))
    reasons = sorted(d["reason"] for d in inbox.dropped)
    assert reasons == ["another federation", "late", "signer is not the site named",
                       "unexpected kind", "unverified", "unverified"]
    late = next(d for d in inbox.dropped if d["reason"] == "late")
    assert (late["site"], late["round"], late["current_round"]) == ("site-b", 1, 2)
    assert inbox.bytes_in > 0
