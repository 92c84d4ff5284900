"""`lepton produce --file`: a producer's own JSON lines reach events.raw keyed by subject, with
trace context; bare payloads are wrapped so ingest accepts them and drops a resend as
duplicates; a file with a bad line sends nothing and names the line, never its contents."""

from __future__ import annotations

import threading
from pathlib import Path

import orjson

from services.ingest.config import IngestSettings
from services.ingest.worker import IngestWorker
from shared.config import LeptonSettings
from shared.events import Envelope, Header, decode
from shared.topics import Topics
from tests.helpers import lepton, read_topic
from tests.unit.ingest.samples import valid_docs


def _lines(docs: list[dict[str, object]]) -> bytes:
    return b"\n".join(orjson.dumps(d) for d in docs) + b"\n"


def test_own_records_are_sent_and_ingested_once(lepton_env: LeptonSettings,
                                                tmp_path: Path) -> None:
    docs = valid_docs(6, seed=21)
    bare = [d["payload"] for d in docs[:4]]  # payloads alone: subject and id from the spec
    no_dataset = {k: v for k, v in docs[4].items() if k != "dataset"}
    whole = docs[5]
    records = tmp_path / "mine.jsonl"
    records.write_bytes(_lines([*bare, no_dataset]) + b"\n" + orjson.dumps(whole) + b"\n")

    result = lepton("produce", "--file", str(records), "--quiet")
    assert "delivered 6 of 6 events" in result.stderr
    assert "seed" not in result.stderr
    topic = Topics(lepton_env.topic_prefix).raw
    sent = {r.key: r for r in read_topic(lepton_env, topic, expect=6)}
    assert sorted(sent) == sorted(str(d["subject_id"]).encode() for d in docs)
    for payload in bare:
        value = orjson.loads(sent[str(payload["customer_id"]).encode()].value)
        assert value == {"event_id": payload["transaction_id"], "dataset": "transactions",
                         "subject_id": payload["customer_id"],
                         "source": "lepton-produce-file", "payload": payload}
    assert orjson.loads(sent[str(no_dataset["subject_id"]).encode()].value) == docs[4]
    assert sent[str(whole["subject_id"]).encode()].value == orjson.dumps(whole)  # as written
    assert all(r.headers[Header.TRACEPARENT].startswith(b"00-") for r in sent.values())

    lepton("produce", "--file", str(records), "--quiet", "--count", "2")  # resent: duplicates
    stop = threading.Event()
    codes: list[int] = []
    worker = threading.Thread(
        target=lambda: codes.append(IngestWorker(IngestSettings(), stop).run()))
    worker.start()
    try:
        clean = read_topic(lepton_env, Topics(lepton_env.topic_prefix).clean, expect=6,
                           timeout=90, settle=3)
        rejected = read_topic(lepton_env, Topics(lepton_env.topic_prefix).rejected, expect=0,
                              timeout=5)
    finally:
        stop.set()
        worker.join(30)
    assert codes == [0]
    assert rejected == []
    ids = sorted(decode(Envelope, r.value).event_id for r in clean)
    assert ids == sorted([*(str(p["transaction_id"]) for p in bare),
                          *(str(d["event_id"]) for d in docs[4:])])


def test_a_bad_line_sends_nothing_and_is_named(lepton_env: LeptonSettings,
                                               tmp_path: Path) -> None:
    good = valid_docs(1, seed=22)[0]
    secret = str(good["payload"]["email"])
    broken = orjson.dumps(good)[:-1]
    records = tmp_path / "bad.jsonl"
    records.write_bytes(_lines([good, good["payload"], {"amount": 3}]) + broken + b"\n[1]\n")

    result = lepton("produce", "--file", str(records), check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"error: {records}: 3 line(s) cannot be sent: line 3: no subject: "
        "field 'customer_id' is missing or not a string (dataset transactions); line 4: not "
        f"JSON (unexpected end of data at column {len(broken) + 1}); line 5: not a JSON object; "
        "nothing was sent")
    assert secret not in result.stderr
    assert read_topic(lepton_env, Topics(lepton_env.topic_prefix).raw, expect=0,
                      timeout=5) == []

    missing = lepton("produce", "--file", str(tmp_path / "nope.jsonl"), check=False)
    assert (missing.returncode, missing.stderr.strip()) == (
        2, f"error: cannot read {tmp_path / 'nope.jsonl'}: No such file or directory")
