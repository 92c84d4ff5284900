"""Fuzz serving's announcement path (shared.events decode + services.serving.gate.check) with
real Redis and a real registry directory: any bytes, signed by an allowed key or not, end in an
applicable announcement or a refusal (EnvelopeError or AnnouncementRefused), never another
exception; whatever passes names a signed, promoted card with the announced sha256 and a fresh
sequence; the committed corpus is replayed first."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from services.serving.gate import AnnouncementGate, AnnouncementRefused
from shared.announcements import signed_bytes
from shared.config import LeptonSettings
from shared.events import EnvelopeError, ModelAnnouncement, decode
from shared.models.registry import ModelCard, Registry
from shared.principals import Principal
from tests.conftest import REDIS_URL
from tests.fuzz.conftest import corpus


@dataclass
class World:
    """A registry with one signed promoted card, the gate, and the trainer principal."""

    gate: AnnouncementGate
    card: ModelCard
    trainer: Principal


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("announce-fuzz")
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    env = LeptonSettings(data_dir=root, redis_url=REDIS_URL, redis_prefix=prefix)
    from tests.unit.serving.support import save_model

    card = save_model(env)
    gate = AnnouncementGate(env, Registry(env))
    gate.start_floor([card.model])
    yield World(gate, card, Principal.load(env, "trainer"))
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _check(data: bytes, world: World) -> None:
    try:
        announcement = decode(ModelAnnouncement, data)
    except EnvelopeError:
        return
    try:
        world.gate.check(announcement, live_version=None)
    except AnnouncementRefused:
        return
    card = world.gate.registry.card(announcement.model, announcement.version)
    assert card.sha256 == announcement.sha256 and card.signature
    assert announcement.signer_key_id == world.trainer.key_id
    assert card.status == "promoted" or announcement.action not in ("promote", "canary")


def _signed(world: World, obj: dict[str, Any]) -> bytes:
    try:
        announcement = ModelAnnouncement.model_validate(obj)
    except ValueError:
        return json.dumps(obj, allow_nan=False).encode()
    announcement = announcement.model_copy(update={"signer_key_id": world.trainer.key_id})
    obj = {**announcement.model_dump(mode="json"),
           "signer_signature": world.trainer.sign(signed_bytes(announcement))}
    return json.dumps(obj, allow_nan=False).encode()


@pytest.mark.parametrize("path", corpus("announcement"), ids=lambda p: p.name)
def test_corpus_replays(path: Path, world: World) -> None:
    _check(path.read_bytes(), world)
    obj = json.loads(path.read_bytes())
    if isinstance(obj, dict):
        _check(_signed(world, obj), world)


def test_a_genuine_announcement_passes_once(world: World) -> None:
    obj = world.card.announcement().model_dump(mode="json")
    obj["sequence"] = 10**9
    world.gate.check(decode(ModelAnnouncement, _signed(world, obj)), live_version=None)
    with pytest.raises(AnnouncementRefused, match="replayed"):
        world.gate.check(decode(ModelAnnouncement, _signed(world, obj)), live_version=None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10)
seed = json.loads((Path(__file__).parent / "corpus/announcement/valid.json").read_text())
announcement_like = st.fixed_dictionaries({}, optional={
    **{k: st.one_of(st.just(v), json_values) for k, v in seed.items()},
    "model": st.sampled_from(["fraud", "..", "../x", "junk", "a.b"]) | json_values,
    "version": st.integers(-1, 5) | json_values,
    "sequence": st.integers(-1, 2**63 - 1) | json_values,
    "action": st.sampled_from(["promote", "rollback", "canary", "shadow", "retire", "x"]),
    "override": st.booleans() | json_values,
})


@settings(settings.get_profile("fuzz"))
@given(st.binary(max_size=2048))
def test_random_bytes(world: World, data: bytes) -> None:
    _check(data, world)


@settings(settings.get_profile("fuzz"))
@given(announcement_like, st.booleans())
def test_announcement_shaped_json(world: World, obj: dict[str, Any], sign: bool) -> None:
    try:
        data = _signed(world, obj) if sign else json.dumps(obj, allow_nan=False).encode()
    except ValueError:
        return
    _check(data, world)
