"""`lepton consent`, `lepton privacy report|rebuild` and `lepton audit verify|prove|check-proof|
consistency|check-consistency` as subprocesses against real Redis, broker and stores."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import orjson
import pytest
import redis
from opacus.accountants.analysis.rdp import compute_rdp

from services.governance.admission import ALLOWED, Admitted, admit
from services.governance.charge_log import ChargeLog
from services.governance.charges import Budget, Charge
from services.governance.config import GovernanceSettings
from services.governance.ledger import Ledger
from services.governance.policy import Policy
from services.governance.releases import ReleaseCharge, ReleaseLedger
from services.governance.store import SEGMENTS, AuditStore, partition_dir
from shared.accounting import ORDERS, epsilon_from_rdp
from shared.allowlist import AllowList
from shared.config import LeptonSettings
from shared.events import Decision
from shared.principals import Principal, public_keys_dir
from shared.pseudonym import load_pseudonymizer
from shared.signing import load_or_create_private_key, public_path
from shared.state import make_redis, rkey
from shared.topics import Topics
from tests.helpers import lepton, local_mode_specs, read_topic


def test_consent_withdraw_and_give(lepton_env: LeptonSettings, redis_client: redis.Redis) -> None:
    key = rkey(lepton_env, "policy", "consent", "transactions")
    pseudonym = load_pseudonymizer(lepton_env).of("cust-000007")
    out = lepton("consent", "cust-000007", "--dataset", "transactions", "--withdraw")
    assert "withdrawn" in out.stdout
    assert redis_client.sismember(key, pseudonym)
    assert not redis_client.sismember(key, "cust-000007")
    lepton("consent", pseudonym, "--dataset", "transactions", "--give")  # either name works
    assert redis_client.scard(key) == 0
    records = read_topic(lepton_env, Topics(lepton_env.topic_prefix).audit_requests, expect=2)
    assert all(b"cust-000007" not in r.value + (r.key or b"") for r in records)
    decisions = [Decision.model_validate_json(r.value) for r in records]
    assert [(d.kind, d.subject_id, d.dataset, d.detail["consent"]) for d in decisions] == [
        ("consent_changed", pseudonym, "transactions", "withdrawn"),
        ("consent_changed", pseudonym, "transactions", "given")]
    assert decisions[0].detail["purpose"] == "fraud-detection"
    operator = Principal.load(lepton_env, "operator")  # the CLI created it on first use
    allow = AllowList(public_keys_dir(lepton_env), ALLOWED)
    for record in records:
        admitted = admit(record.value, lambda name: name == "transactions", 100.0, allow)
        assert isinstance(admitted, Admitted), admitted
        assert (admitted.principal.name, admitted.decision.key_id) == ("operator",
                                                                       operator.key_id)
    bad = lepton("consent", "x", "--dataset", "nosuch", check=False)
    assert bad.returncode == 2 and "unknown dataset" in bad.stderr


def test_consent_is_not_changed_when_its_decision_cannot_be_recorded(
        lepton_env: LeptonSettings, redis_client: redis.Redis) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    result = lepton("consent", "cust-000008", "--dataset", "transactions", "--withdraw",
                    env={"LEPTON_KAFKA_BOOTSTRAP": closed}, check=False)
    assert result.returncode == 69, result.stderr[-2000:]
    assert "error: consent not changed: its consent_changed decision could not be sent" in \
        result.stderr and "Traceback" not in result.stderr
    # a withdrawal in Redis alone would be undone by a rebuild from the audit store
    assert redis_client.scard(rkey(lepton_env, "policy", "consent", "transactions")) == 0


def _build_store(settings: GovernanceSettings) -> None:
    key = load_or_create_private_key(settings.audit_key_path())
    store = AuditStore(settings.audit_dir(), Topics(settings.topic_prefix).audit_log,
                       fsync=False)
    store.open(2)
    for i in range(40):
        store.append(i % 2, {"identity": f"event:e{i}", "kind": "event_released",
                             "actor": "governance", "event_id": f"e{i}", "source": f"c/0/{i}",
                             "epsilon": 1.0})
        if i % 10 == 9:
            store.checkpoint(i % 2, key)
    store.close()


def test_audit_verify_prove_check_and_tamper(lepton_env: LeptonSettings, tmp_path: Path) -> None:
    settings = GovernanceSettings()
    nothing = lepton("audit", "verify", check=False)
    assert (nothing.returncode, nothing.stderr.strip()) == (
        1, f"error: no audit log under {settings.audit_dir()} (has governance run with this "
           "LEPTON_DATA_DIR?)")
    _build_store(settings)
    assert "verified" in lepton("audit", "verify").stdout

    # a third party holds only the public key
    public = tmp_path / "third-party" / "audit.pub"
    public.parent.mkdir()
    shutil.copy(public_path(settings.audit_key_path()), public)
    proof_file = tmp_path / "proof.json"
    lepton("audit", "prove", "e7", "--out", str(proof_file))
    unwritable = lepton("audit", "prove", "e7", "--out", str(tmp_path / "no" / "proof.json"),
                        check=False)
    assert unwritable.returncode == 73 and "cannot write" in unwritable.stderr
    checked = lepton("audit", "check-proof", str(proof_file), "--public-key", str(public))
    assert "proof OK" in checked.stdout and "event:e7" in checked.stdout
    proof = json.loads(proof_file.read_text())
    proof["record"] = proof["record"].replace('"epsilon":1.0', '"epsilon":0.0')
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(proof))
    rejected = lepton("audit", "check-proof", str(forged), "--public-key", str(public),
                      check=False)
    assert rejected.returncode == 1 and "PROOF REJECTED" in rejected.stderr
    assert lepton("audit", "prove", "nope", check=False).returncode == 1

    consistency = lepton("audit", "consistency", "--partition", "1").stdout
    (tmp_path / "c.json").write_text(consistency)
    assert orjson.loads(consistency)["old"]["tree_size"] == 5
    ok = lepton("audit", "check-consistency", str(tmp_path / "c.json"), "--public-key",
                str(public))
    assert "consistency OK" in ok.stdout

    seg = next((partition_dir(settings.audit_dir(), 1) / SEGMENTS).glob("*.seg"))
    seg.write_bytes(seg.read_bytes().replace(b'"event_id":"e9"', b'"event_id":"e8"'))
    failed = lepton("audit", "verify", check=False)
    assert failed.returncode == 1
    assert "VERIFICATION FAILED" in failed.stderr and "partition 1" in failed.stderr


def test_privacy_report_and_rebuild(lepton_env: LeptonSettings, monkeypatch: pytest.MonkeyPatch,
                                    redis_client: redis.Redis, redis_prefix: str) -> None:
    monkeypatch.setenv("LEPTON_GOVERNANCE_SPECS_DIR", str(local_mode_specs()))
    settings = GovernanceSettings()
    log = ChargeLog(settings.ledger_dir(), fsync=False)
    log.open()
    ledger = Ledger(redis_client, settings, log)
    ledger.ensure_ready()
    assert lepton("privacy", "report").stdout.strip() == \
        "no privacy budget spent yet: nothing charged to the ledger"
    typo = lepton("privacy", "report", "--dataset", "transactons", check=False)
    assert typo.returncode == 2 and "unknown dataset 'transactons'" in typo.stderr
    # a dataset with a spec and no charge yet is no typo: its row says nothing was spent
    fresh = orjson.loads(lepton("privacy", "report", "--dataset", "transactions",
                                "--json").stdout)["datasets"]
    assert [(d["dataset"], d["mode"], d["subjects"]) for d in fresh] == \
        [("transactions", "local", 0)]
    budget = Budget(subject=50.0, dataset=1e7)
    # local mode: cust-0 has 10 events of ε 1 (then 10 each for cust-1 and cust-2)
    ledger.charge("transactions", budget,
                  [Charge(f"event:e{i}", f"cust-{i % 3}", 1.0) for i in range(30)])
    log.close()
    # model mode: two releases of breast_cancer, one patient in both
    releases = ReleaseLedger(redis_client, settings, settings.ledger_dir() / "releases",
                             fsync=False)
    releases.ensure_ready()
    curve = tuple(float(v) for v in compute_rdp(q=0.1, noise_multiplier=1.0, steps=50,
                                                orders=list(ORDERS)))
    for rid, patients in (("r1", [f"p{i}" for i in range(99)] + ["both"]), ("r2", ["both"])):
        assert releases.charge("breast_cancer", 10.0, 1e5, 1e-5,
                               ReleaseCharge(rid, curve, tuple(patients))).charged
    releases.close()
    before = (ledger.spend("transactions"), ledger.subjects("transactions"),
              releases.subject_epsilons("breast_cancer", 1e-5))
    data = orjson.loads(lepton("privacy", "report", "--json").stdout)
    by_name = {d["dataset"]: d for d in data["datasets"]}
    tx, bc = by_name["transactions"], by_name["breast_cancer"]
    assert (tx["mode"], tx["subjects"]) == ("local", 3)
    assert tx["per_subject_epsilon"] == {"max": 10.0, "p50": 10.0, "p99": 10.0}
    one = epsilon_from_rdp(curve, 1e-5)
    two = epsilon_from_rdp([2 * v for v in curve], 1e-5)
    assert (bc["mode"], bc["subjects"], bc["releases_charged"]) == ("model", 100, 2)
    assert bc["per_subject_epsilon"]["max"] == pytest.approx(two, rel=1e-9)
    assert bc["per_subject_epsilon"]["p50"] == pytest.approx(one, rel=1e-9)
    assert bc["per_subject_epsilon"]["max"] < 2 * one  # composed, and never a sum over subjects
    assert [r["epsilon"] for r in bc["releases"]] == pytest.approx([one, one])
    assert bc["exhausted"] == 0
    monkeypatch.delenv("COLUMNS", raising=False)
    text = lepton("privacy", "report").stdout  # piped: no column cut short
    assert "never summed" in text and "breast_cancer" in text and "r2" in text
    assert "…" not in text and f"{bc['per_subject_epsilon']['max']:.4g}" in text

    for key in redis_client.scan_iter(match=f"{redis_prefix}governance:*"):
        redis_client.delete(key)
    assert "not in Redis" in lepton("privacy", "report").stdout
    assert "from 30 charges and 2 releases" in lepton("privacy", "rebuild").stdout
    assert (ledger.spend("transactions"), ledger.subjects("transactions"),
            releases.subject_epsilons("breast_cancer", 1e-5)) == before


def test_audit_prove_by_subject_for_an_operator_who_knows_it(lepton_env: LeptonSettings) -> None:
    from services.governance.verify import check_inclusion
    from shared.signing import load_public_key

    settings = GovernanceSettings()
    pseudonym = load_pseudonymizer(settings).of("cust-000042")
    key = load_or_create_private_key(settings.audit_key_path())
    store = AuditStore(settings.audit_dir(), Topics(settings.topic_prefix).audit_log,
                       fsync=False)
    store.open(1)
    for i in range(12):
        store.append(0, {"identity": f"event:s{i}", "kind": "event_released",
                         "actor": "governance", "event_id": f"s{i}", "source": f"c/0/{i}",
                         "subject_id": pseudonym if i % 4 == 0 else f"ps1:{i:024x}"})
    store.checkpoint(0, key)
    store.close()
    stored = b"".join(p.read_bytes() for p in settings.audit_dir().rglob("*") if p.is_file())
    assert b"cust-000042" not in stored and pseudonym.encode() in stored

    proofs = json.loads(lepton("audit", "prove", "--subject", "cust-000042").stdout)
    public = load_public_key(public_path(settings.audit_key_path()))
    assert sorted(json.loads(p["record"])["event_id"] for p in proofs) == ["s0", "s4", "s8"]
    for proof in proofs:
        assert "event:s" in check_inclusion(proof, public)
    assert lepton("audit", "prove", "--subject", "nobody", check=False).returncode == 1
    assert lepton("audit", "prove", check=False).returncode == 2


def test_an_operator_subject_id_that_no_envelope_could_carry_is_refused(
        lepton_env: LeptonSettings) -> None:
    """forget, consent and audit prove take a subject id as envelopes carry it (or its
    pseudonym): anything else exits 2 naming the rule, and changes nothing."""
    settings = GovernanceSettings()
    for bad in ("", "two words", "x" * 201):
        for args in (("forget", bad), ("consent", bad, "--dataset", "transactions"),
                     ("audit", "prove", "--subject", bad)):
            result = lepton(*args, check=False)
            assert result.returncode == 2, (args, result.stderr[-1500:])
            assert "invalid subject id: a subject id is 1-200 characters" in result.stderr
    policy = Policy(make_redis(settings), settings)
    assert policy.redis.scard(policy.forgotten_key()) == 0
    assert policy.redis.scard(policy.consent_key("transactions")) == 0
    assert read_topic(settings, Topics(settings.topic_prefix).audit_requests, idle=1.0) == []
