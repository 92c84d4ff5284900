"""The embedded broker process, `lepton produce`, and trace context across processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import psutil
import pytest

from shared.config import LeptonSettings
from shared.events import Header, decode_envelope
from shared.lifecycle import parent_death
from shared.topics import Topics
from tests.helpers import lepton, read_topic

PEER = str(Path(__file__).with_name("trace_peer.py"))
READER = """
import sys, orjson
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": "plain-reader",
              "auto.offset.reset": "earliest", "enable.auto.commit": False})
c.subscribe([sys.argv[2]])
want, seen = int(sys.argv[3]), []
while len(seen) < want:
    for m in c.consume(500, timeout=1.0):
        if not m.error():
            seen.append({"value": m.value().decode(), "headers": dict(
                (k, v.decode()) for k, v in (m.headers() or []))})
c.close()
print(orjson.dumps(seen).decode())
"""


def test_produce_reaches_a_plain_consumer_in_another_process(lepton_env: LeptonSettings) -> None:
    topic = Topics(lepton_env.topic_prefix).raw
    result = lepton("produce", "--dataset", "transactions", "--count", "1000", "--quiet")
    assert "delivered 1000 of 1000" in result.stderr
    reader = subprocess.run(
        [sys.executable, "-c", READER, lepton_env.bootstrap_servers(), topic, "1000"],
        capture_output=True, text=True, timeout=120, check=True,
        preexec_fn=parent_death(),
    )
    records = orjson.loads(reader.stdout)
    assert len(records) == 1000
    events = [decode_envelope(r["value"]) for r in records]
    assert len({e.event_id for e in events}) == 1000
    assert all(e.dataset == "transactions" for e in events)
    parents = {r["headers"][Header.TRACEPARENT] for r in records}
    assert len(parents) == 1000
    assert all(p.startswith("00-") and len(p.split("-")) == 4 for p in parents)


def test_each_run_sends_new_events_unless_it_repeats_a_seed(lepton_env: LeptonSettings) -> None:
    runs = [lepton("produce", "--count", "5", "--quiet").stderr for _ in range(2)]
    seeds = [re.search(r"\(seed (\d+): --seed \1 sends these events again, which ingest drops "
                       r"as duplicates\)", run) for run in runs]
    assert seeds[0] and seeds[1], runs
    lepton("produce", "--count", "5", "--quiet", "--seed", seeds[0].group(1))
    records = read_topic(lepton_env, Topics(lepton_env.topic_prefix).raw, expect=15)
    sent = Counter(decode_envelope(r.value).event_id for r in records)
    first, second = (f"transactions-{seed.group(1)}-" for seed in seeds)
    assert sorted(n for i, n in sent.items() if i.startswith(first)) == [2] * 5  # repeated
    assert sorted(n for i, n in sent.items() if i.startswith(second)) == [1] * 5


def test_kcat_reads_what_lepton_produce_wrote(lepton_env: LeptonSettings) -> None:
    kcat = shutil.which("kcat")
    assert kcat, "kcat is installed by scripts/install.sh"
    lepton("produce", "--dataset", "breast_cancer", "--count", "50", "--quiet")
    out = subprocess.run(
        [kcat, "-C", "-b", lepton_env.bootstrap_servers(), "-t",
         Topics(lepton_env.topic_prefix).raw, "-e", "-q", "-f", "%s\n"],
        capture_output=True, text=True, timeout=60, check=True,
        preexec_fn=parent_death(),
    ).stdout.splitlines()
    assert len(out) == 50
    assert {decode_envelope(line).dataset for line in out} == {"breast_cancer"}


@pytest.mark.parametrize("client", ["confluent", "aiokafka"])
def test_trace_context_survives_produce_and_consume(
    lepton_env: LeptonSettings, client: str
) -> None:
    topic = f"{lepton_env.topic_prefix}trace.{client}"
    produced = subprocess.run(
        [sys.executable, PEER, "produce", client, topic],
        capture_output=True, text=True, timeout=60, check=True,
        preexec_fn=parent_death(),
    )
    consumed = subprocess.run(
        [sys.executable, PEER, "consume", client, topic],
        capture_output=True, text=True, timeout=90, check=True,
        preexec_fn=parent_death(),
    )
    sent = orjson.loads(produced.stdout.splitlines()[-1])
    got = orjson.loads(consumed.stdout.splitlines()[-1])
    assert got["trace_id"] == sent["trace_id"]
    assert got["parent_id"] == sent["span_id"]
    assert got["span_id"] != sent["span_id"]


def _start_broker(path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lepton", "broker", "--bootstrap-file", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
        preexec_fn=parent_death(),
    )
    deadline = time.monotonic() + 30
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "broker did not write its bootstrap file"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_broker_serves_two_processes_and_stops_cleanly(tmp_path: Path, signum: int) -> None:
    path = tmp_path / "bootstrap"
    proc = _start_broker(path)
    try:
        bootstrap = path.read_text().strip()
        env = {"LEPTON_KAFKA_BOOTSTRAP": bootstrap, "LEPTON_TOPIC_PREFIX": "solo."}
        lepton("produce", "--count", "200", "--quiet", env=env)
        lepton("produce", "--count", "100", "--quiet", "--seed", "9", env=env)
        settings = LeptonSettings(kafka_bootstrap=bootstrap, topic_prefix="solo.")
        assert len(read_topic(settings, "solo.events.raw", expect=300)) == 300
        children = psutil.Process(proc.pid).children(recursive=True)
    finally:
        proc.send_signal(signum)
        code = proc.wait(10)
    assert code == 0
    assert not path.exists()
    assert proc.stdout is not None and proc.stdout.read().startswith(f"bootstrap {bootstrap}")
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
