"""Forgetting reaches Redis's own files: on a private redis-server with AOF and RDB on, the
subject's wrapped data key is in the AOF before `lepton forget` and in no file after it (the
command rewrote both), a restart from those files has no key to decrypt with, other subjects'
keys survive; `lepton keys retire` removes a master key only once nothing is wrapped under it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.ingest.keyring import LocalKms
from services.ingest.keystore import KeyStore
from shared.config import LeptonSettings
from shared.crypto import KeyDestroyed
from shared.models.registry import Registry
from shared.state import rkey
from tests.helpers import PrivateRedisServer, lepton


@pytest.fixture
def aof_redis(tmp_path: Path, lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[PrivateRedisServer]:
    (tmp_path / "redis").mkdir()
    server = PrivateRedisServer(str(tmp_path / "redis")).start()
    monkeypatch.setenv("LEPTON_REDIS_URL", server.url)
    yield server
    server.stop()


def test_forget_rewrites_the_aof_and_rdb_and_retire_needs_no_dependents(
        aof_redis: PrivateRedisServer, lepton_env: LeptonSettings) -> None:
    settings = LeptonSettings()
    store = KeyStore(settings)
    subjects = [f"cust-{i}" for i in range(5)]
    secrets = {s: store.encrypt_for(s, f"ev-{s}", "email", f"{s}@example.com") for s in subjects}
    client = redis.Redis.from_url(aof_redis.url)
    client.bgsave()  # an RDB snapshot holding every key, as a periodic save would leave
    victim = subjects[0]
    key_name = rkey(settings, "crypto", "datakey", store.data_key_id(victim))
    wrapped = client.get(key_name)
    assert wrapped is not None
    for _ in range(100):
        if wrapped in aof_redis.files() and (Path(aof_redis.directory) / "dump.rdb").exists():
            break
        client.ping()
    assert wrapped in aof_redis.files()  # the files held the key: the scan below can fail

    out = lepton("forget", victim).stdout
    assert "destroyed: Redis AOF rewritten (BGREWRITEAOF)" in out
    assert "destroyed: Redis RDB snapshot rewritten (BGSAVE)" in out
    assert "not reached: Redis" not in out
    files = aof_redis.files()
    assert wrapped not in files
    assert key_name.encode() not in files
    assert victim.encode() not in files  # the forgotten set holds the pseudonym
    others = [client.get(rkey(settings, "crypto", "datakey", store.data_key_id(s)))
              for s in subjects[1:]]
    assert all(w is not None and w in files for w in others)

    # a restart from the rewritten files: the victim's key is gone for good
    client.close()
    aof_redis.stop()
    aof_redis.start()
    fresh = KeyStore(LeptonSettings())
    with pytest.raises(KeyDestroyed):
        fresh.decrypt_field(f"ev-{victim}", "email", secrets[victim])
    for s in subjects[1:]:
        assert fresh.decrypt_field(f"ev-{s}", "email", secrets[s]) == f"{s}@example.com"

    # retire: refused for the active key and while data keys depend on it; done after rewrap
    kms = LocalKms.from_settings(settings)
    old = kms.active_key_id()
    new = kms.add_key()  # a rotation whose re-wrap has not run yet
    refused = lepton("keys", "retire", new, check=False)
    assert refused.returncode == 1 and "active master key" in refused.stderr
    status = lepton("keys", "status").stdout
    assert f"  {old}  wraps 4 data keys; run `lepton keys rewrap`" in status
    blocked = lepton("keys", "retire", old, check=False)
    assert blocked.returncode == 1 and "data keys are still wrapped" in blocked.stderr
    assert old in LocalKms.from_settings(settings).key_ids()
    lepton("keys", "rewrap")
    status = lepton("keys", "status").stdout
    assert f"  {old}  wraps 0 data keys; retirable" in status
    assert f"* {new}  wraps 4 data keys; active" in status
    done = lepton("keys", "retire", old)
    assert f"retired master key {old}" in done.stdout
    assert old not in LocalKms.from_settings(settings).key_ids()
    assert lepton("keys", "retire", old, check=False).returncode == 1
    fresh = KeyStore(LeptonSettings())
    for s in subjects[1:]:
        assert fresh.decrypt_field(f"ev-{s}", "email", secrets[s]) == f"{s}@example.com"


def test_state_rebuild_restores_keys_policy_and_live_pointer(
        aof_redis: PrivateRedisServer, lepton_env: LeptonSettings) -> None:
    from services.governance.config import GovernanceSettings
    from services.governance.policy import Policy
    from services.governance.store import AuditStore
    from shared.signing import load_or_create_private_key
    from shared.topics import Topics
    from tests.unit.serving.support import save_model

    settings = GovernanceSettings()
    store = KeyStore(settings)
    secrets = {s: store.encrypt_for(s, f"ev-{s}", "email", f"{s}@example.com")
               for s in ("keep-1", "keep-2", "gone")}
    store.forget("gone")
    gone, optout = store.pseudonyms.of("gone"), store.pseudonyms.of("optout")
    audit = AuditStore(settings.audit_dir(), Topics(settings.topic_prefix).audit_log,
                       fsync=False)
    audit.open(1)
    for i, (kind, subject, detail) in enumerate([
            ("subject_forgotten", gone, {}),
            ("consent_changed", optout, {"consent": "withdrawn", "purpose": "p"}),
            ("consent_changed", store.pseudonyms.of("back"), {"consent": "withdrawn",
                                                              "purpose": "p"}),
            ("consent_changed", store.pseudonyms.of("back"), {"consent": "given",
                                                              "purpose": "p"})]):
        audit.append(0, {"identity": f"decision:d{i}", "kind": kind, "actor": "cli",
                         "source": f"r/0/{i}", "subject_id": subject,
                         "dataset": "transactions", "detail": detail})
    audit.checkpoint(0, load_or_create_private_key(settings.audit_key_path()))
    audit.close()
    registry = Registry(settings)
    card = save_model(settings, model="fraud")
    registry.set_live("fraud", card.version)

    client = redis.Redis.from_url(aof_redis.url)
    client.flushall()
    out = lepton("state", "rebuild").stdout
    assert "data keys: 2 restored" in out  # keep-1 and keep-2; gone left a tombstone
    assert "4 decisions re-applied" in out
    assert f"model fraud: live version {card.version}" in out
    policy = Policy(client, settings)
    assert policy.blocked([("transactions", gone), ("transactions", optout),
                           ("transactions", store.pseudonyms.of("back"))]) == [
        "subject_forgotten", "consent_withdrawn", None]
    fresh = KeyStore(GovernanceSettings())
    assert fresh.decrypt_field("ev-keep-1", "email", secrets["keep-1"]) == "keep-1@example.com"
    with pytest.raises(KeyDestroyed):
        fresh.decrypt_field("ev-gone", "email", secrets["gone"])
    assert fresh.data_keys(["gone"]) == ({}, {"gone": "forgotten"})  # never re-minted
    client.close()
