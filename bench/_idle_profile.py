"""Where a stage's CPU goes, per event: py-spy samples the stage process's Python thread while
it works through preloaded `transactions` events (1 % of traces sampled, or every one with
`--all-sampled`), psutil splits the
process's CPU time between that thread and librdkafka's own threads, and the samples are
grouped by what the code does (see CATEGORIES).

Run: `.venv/bin/python bench/stage_profile.py ingest|governance [--events 20000] [--warm]
[--all-sampled]`
(`--warm`: ingest first runs over other events of the same customers, so data keys exist; the
governance run uses a warm ingest to make its input). Needs `py-spy` (pip install py-spy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path("/work/main")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest_bench import PREFIXES, _forget_redis_keys, publish, reader, start_broker  # noqa: E402
from pipeline_bench import SAMPLED_1, SAMPLED_100, _decision, start, stop_all  # noqa: E402

from lepton.generators import transactions  # noqa: E402
from shared.config import LeptonSettings  # noqa: E402
from shared.events import encode  # noqa: E402
from shared.kafka import ensure_topics  # noqa: E402
from shared.lifecycle import parent_death  # noqa: E402
from shared.topics import Topics  # noqa: E402

# Inside `process()` (a stack through the runtime's `process_waiting`) the first category any
# frame of a sample's stack matches names it (order matters: a stack through protect.py that
# reaches keyring.b64e is protection, not key handling), else "rest of process()"; outside it,
# the runtime's own loop: polling, producing the outputs, committing, checkpoints.
IN_PROCESS = "process_waiting ("
CATEGORIES = [
    ("decode (orjson + envelope check)", ("_decode (", "fast_envelope.py", "decoding.py")),
    ("clean (columns)", ("ingest/cleaning.py", "ingest/columns.py", "ingest/normalise.py")),
    ("data keys (mint, unwrap, key files)", ("ingest/keystore.py", "ingest/wrapped_keys.py",
                                             "ingest/key_cache.py", "ingest/rewrap.py",
                                             "shared/crypto.py")),
    ("protect (AES-GCM, tokens)", ("ingest/protect.py",)),
    ("dedup, policy, bound (Redis)", ("dedup.py", "policy.py", "bound.py", "releases.py",
                                      "ledger.py", "charges.py", "charge_log.py", "/redis/")),
    ("audit leaves (JSON, SHA-256, segments)", ("governance/store.py", "records.py",
                                                "merkle.py", "segments.py", "event_fields")),
    ("metrics", ("telemetry.py", "opentelemetry/sdk/metrics", "opentelemetry/metrics")),
    ("trace context (record_trace)", ("record_trace.py", "opentelemetry/")),
    ("output JSON, MAC, dead letters", ("encoding.py", "letters.py", "governed_json",
                                        "governed_mac.py", "shared/dlq.py", "outputs_for")),
    ("quality counts", ("quality",)),
]
REST = "rest of process()"
RUNTIME = "runtime loop: Kafka client calls (poll, produce, commit), checkpoints"


def categorise(raw: Path) -> Counter[str]:
    """Samples of the main thread per category from py-spy's raw (collapsed stacks) output
    (other Python threads, e.g. the signal watcher, only wait)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if "_bootstrap" in stack.split(";", 1)[0]:
            continue
        if IN_PROCESS not in stack:
            name = RUNTIME if "shared/stage/" in stack else "other (interpreter, start-up)"
        else:
            name = next((name for name, keys in CATEGORIES if any(k in stack for k in keys)),
                        REST)
        counts[name] += int(number)
    return counts


def thread_cpu(pid: int) -> tuple[float, float]:
    """(CPU seconds of the main thread, of every other thread) of process `pid`."""
    threads = psutil.Process(pid).threads()
    main = next((t for t in threads if t.id == pid), None)
    main_s = (main.user_time + main.system_time) if main else 0.0
    return main_s, sum(t.user_time + t.system_time for t in threads) - main_s


def main() -> None:
    """Profile one stage and print its per-event breakdown as markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["ingest", "governance"])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--warm", action="store_true")
    parser.add_argument("--all-sampled", action="store_true",
                        help="every trace sampled (the stage and the ingest run before it)")
    args = parser.parse_args()
    sampled = SAMPLED_100 if args.all_sampled else SAMPLED_1
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).is_file():
        parser.error("needs py-spy, which the project does not install: pip install py-spy")
    broker, bootstrap = start_broker()
    topics = Topics(f"prof{uuid.uuid4().hex[:8]}.")
    PREFIXES.append(f"{topics.prefix}:")
    data = tempfile.mkdtemp()
    try:
        ensure_topics(LeptonSettings(kafka_bootstrap=bootstrap, topic_prefix=topics.prefix),
                      topics.all())
        warm = args.warm or args.stage == "governance"
        values = [encode(e) for e in transactions(
            args.events * (2 if warm else 1), seed=9,
            customers=args.events // 4 if warm else args.events // 2)]
        clean = reader(bootstrap, topics.clean)
        batches = [values[:args.events], values[args.events:]] if warm else [values]
        for number, batch in enumerate(batches):
            publish(bootstrap, topics.raw, batch)
            if number < len(batches) - 1 or args.stage == "governance":
                procs = start(["ingest"], bootstrap, topics, sampled, data)
                print(f"  ingest made {_wait(clean, len(batch)):,} clean events",
                      file=sys.stderr)
                stop_all(procs)
        out = clean if args.stage == "ingest" else reader(bootstrap, topics.audit_log)
        keep = (lambda m: True) if args.stage == "ingest" else _decision
        [proc] = start([args.stage], bootstrap, topics, sampled, data)
        first = _wait(out, 1, keep, idle_s=120)
        raw = Path(tempfile.mkdtemp()) / "stacks.txt"
        recorder = subprocess.Popen([spy, "record", "-r", "500", "-f", "raw", "--idle", "-o", str(raw),
                                     "-p", str(proc.pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, preexec_fn=parent_death())
        before, started = thread_cpu(proc.pid), time.monotonic()
        done = first + _wait(out, args.events - first, keep)
        after, seconds = thread_cpu(proc.pid), time.monotonic() - started
        rss_mib = psutil.Process(proc.pid).memory_info().rss / 2**20
        recorder.send_signal(signal.SIGINT)
        recorder.wait(30)
        stop_all([proc])
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(20)
        _forget_redis_keys(PREFIXES)
    main_us = (after[0] - before[0]) * 1e6 / done
    other_us = (after[1] - before[1]) * 1e6 / done
    import shutil as _s; _s.copy(raw, "/tmp/idle_stacks.txt")
    counts = categorise(raw)
    total = sum(counts.values()) or 1
    print(f"\n{args.stage}{' (data keys minted before)' if args.warm else ''}"
          f"{', every trace sampled' if args.all_sampled else ''}: {done:,} events "
          f"in {seconds:.1f} s ({done / seconds:,.0f}/s); CPU {main_us + other_us:.0f} µs/event "
          f"= Python thread {main_us:.0f} + librdkafka threads {other_us:.0f}; resident memory "
          f"at the end {rss_mib:,.0f} MiB\n")
    print("| where (Python thread, py-spy samples) | share | µs/event |\n|---|---:|---:|")
    for name, count in counts.most_common():
        print(f"| {name} | {count / total:.0%} | {main_us * count / total:.1f} |")
    print(f"| librdkafka's own threads (psutil) | | {other_us:.1f} |")


def _wait(consumer: object, count: int, keep: object = None, idle_s: float = 5.0) -> int:
    """Read until `count` records `keep` selects arrived or none came for `idle_s`; how many."""
    seen, last = 0, time.monotonic()
    while seen < count and time.monotonic() - last < idle_s:
        got = [m for m in consumer.consume(5000, 0.1)  # type: ignore[attr-defined]
               if m.error() is None and (keep is None or keep(m))]  # type: ignore[operator]
        if got:
            seen, last = seen + len(got), time.monotonic()
    return seen


if __name__ == "__main__":
    os.environ.setdefault("LEPTON_LOG_LEVEL", "WARNING")
    main()
