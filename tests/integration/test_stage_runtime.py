"""The shared stage runtime's commit policy, once, against the real embedded broker: outputs
and offsets commit together exactly once; infrastructure errors are waited out; a transaction
that has to abort is rewound and its batch processed again, with nothing of the aborted try
visible; a stop commits what finished and resumes exactly there; outputs that an unfinished
transaction left on the embedded broker are not produced again; a due output an aborted
transaction carried goes with a later one; the at-least-once runtime acknowledges a batch only
after its outputs are delivered."""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import Message, TopicPartition

from shared.config import LeptonSettings
from shared.kafka import make_consumer, make_producer
from shared.positions import InputPositions
from shared.stage import AtLeastOnceRuntime, Output, TransactionalRuntime
from shared.stage.model import next_offsets
from shared.stage.transactional import POSITION_REFRESH_S
from shared.stage.written import origin_header
from tests.helpers import read_topic

N = 300


class Unavailable(Exception):
    """Stands for Redis being down."""


class EchoStage:
    """Copies each input to the output topic; can fail on purpose."""

    name = "echo"
    waits_out: tuple[type[BaseException], ...] = (Unavailable,)

    def __init__(self, prefix: str, *, unavailable: int = 0, poison_commits: int = 0) -> None:
        self.inputs = [f"{prefix}in"]
        self.outputs = [f"{prefix}out"]
        self.unavailable = unavailable
        self.poison_commits = poison_commits
        self.processed: Counter[bytes] = Counter()
        self.committed_records = 0
        self.aborted_batches: list[int] = []
        self.acked = 0

    def process(self, batch: list[Message]) -> list[Output]:
        if self.unavailable > 0:
            self.unavailable -= 1
            raise Unavailable("down")
        outputs = []
        for msg in batch:
            self.processed[msg.value() or b""] += 1
            outputs.append(Output(self.outputs[0], msg.key(), msg.value() or b"", origin=msg))
        if self.poison_commits > 0:
            self.poison_commits -= 1
            # larger than message.max.bytes: the produce fails inside the open transaction
            outputs.append(Output(self.outputs[0], b"big", b"x" * 3_000_000))
        return outputs

    def due(self, final: bool) -> list[Output]:
        return []

    def committed(self, batch: list[Message], seconds: float) -> None:
        self.committed_records += len(batch)
        self.acked += 1

    def aborted(self, batch: list[Message]) -> None:
        self.aborted_batches.append(len(batch))


@pytest.fixture
def prefix(lepton_env: LeptonSettings) -> str:
    return lepton_env.topic_prefix


def _feed(settings: LeptonSettings, topic: str, count: int, start: int = 0) -> set[bytes]:
    producer = make_producer(settings)
    values = set()
    for i in range(start, start + count):
        value = f"v{i}".encode()
        producer.produce(topic, key=f"k{i % 7}".encode(), value=value)
        values.add(value)
    assert producer.flush(15) == 0
    return values


def _transactional(settings: LeptonSettings, stage: EchoStage, stop: threading.Event,
                   group: str, position_refresh_s: float = POSITION_REFRESH_S
                   ) -> TransactionalRuntime:
    return TransactionalRuntime(
        settings, stage, stop, group_id=group, transactional_id=f"{group}-tx",
        positions_topic=f"{settings.topic_prefix}echo.offsets", batch_size=50,
        poll_timeout_s=0.2, position_refresh_s=position_refresh_s)


@pytest.fixture
def running() -> Iterator[list[tuple[threading.Thread, threading.Event]]]:
    threads: list[tuple[threading.Thread, threading.Event]] = []
    yield threads
    for thread, stop in threads:
        stop.set()
        thread.join(20)


def _start(runtime: TransactionalRuntime | AtLeastOnceRuntime, stop: threading.Event,
           codes: list[int], threads: list[tuple[threading.Thread, threading.Event]]
           ) -> threading.Thread:
    thread = threading.Thread(target=lambda: codes.append(runtime.run()), daemon=True)
    thread.start()
    threads.append((thread, stop))
    return thread


def _committed(stage: EchoStage, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while stage.committed_records < count:
        assert time.monotonic() < deadline, f"{stage.committed_records} of {count} committed"
        time.sleep(0.1)


def _run_to_the_end(settings: LeptonSettings, stage: EchoStage, group: str, expect: int,
                    running: list[tuple[threading.Thread, threading.Event]]
                    ) -> tuple[Counter[bytes], list[int]]:
    """Run a transactional runtime of `stage` until it committed N records, then stop it: its
    output topic (`expect` records) and its exit status."""
    stop, codes = threading.Event(), []
    thread = _start(_transactional(settings, stage, stop, f"{group}-{uuid.uuid4().hex[:6]}"),
                    stop, codes, running)
    _committed(stage, N)
    out = _outputs(settings, stage.outputs[0], expect)
    stop.set()
    thread.join(20)
    return out, codes


def _outputs(settings: LeptonSettings, topic: str, expect: int) -> Counter[bytes]:
    # read once the runtime has committed: the embedded broker can hold back a read_committed
    # reader that polls across a transaction being aborted
    return Counter(r.value for r in read_topic(settings, topic, expect=expect, timeout=60,
                                               settle=1.5))


def test_outputs_commit_exactly_once_through_outages_aborts_and_a_restart(
        lepton_env: LeptonSettings, prefix: str,
        running: list[tuple[threading.Thread, threading.Event]]) -> None:
    settings = lepton_env
    group = f"echo-{uuid.uuid4().hex[:6]}"
    stage = EchoStage(prefix, unavailable=3, poison_commits=2)
    values = _feed(settings, stage.inputs[0], N)
    stop, codes = threading.Event(), []
    thread = _start(_transactional(settings, stage, stop, group), stop, codes, running)
    _committed(stage, N)
    first = _outputs(settings, stage.outputs[0], N)
    assert set(first) == values
    assert all(n == 1 for n in first.values()), "an output committed twice"
    assert b"x" * 3_000_000 not in first
    assert len(stage.aborted_batches) == 2, stage.aborted_batches
    assert stage.unavailable == 0
    assert max(stage.processed.values()) >= 2  # the aborted batches were processed again
    stop.set()
    thread.join(20)
    assert codes == [0]

    # a new replica of the same group resumes exactly after what was committed
    more = _feed(settings, stage.inputs[0], N // 2, start=N)
    again = EchoStage(prefix)
    stop2, codes2 = threading.Event(), []
    thread2 = _start(_transactional(settings, again, stop2, group), stop2, codes2, running)
    _committed(again, N // 2)
    total = _outputs(settings, stage.outputs[0], N + N // 2)
    assert set(total) == values | more
    assert all(n == 1 for n in total.values())
    assert set(again.processed) == more, "the restart consumed records already committed"
    stop2.set()
    thread2.join(20)
    assert codes2 == [0]


class DueStage(EchoStage):
    """An echo that has one output due (as a signed checkpoint is) once it has processed a
    batch."""

    def __init__(self, prefix: str, **kwargs: int) -> None:
        super().__init__(prefix, **kwargs)
        self.made_due = False

    def due(self, final: bool) -> list[Output]:
        if self.made_due or not self.processed:
            return []
        self.made_due = True
        return [Output(self.outputs[0], b"due", b"due-1")]


def test_a_due_output_of_an_aborted_transaction_commits_with_a_later_one(
        lepton_env: LeptonSettings, prefix: str,
        running: list[tuple[threading.Thread, threading.Event]]) -> None:
    """The stage makes its due output once; the transaction that first carries it aborts."""
    settings = lepton_env
    stage = DueStage(prefix, poison_commits=1)
    values = _feed(settings, stage.inputs[0], N)
    out, codes = _run_to_the_end(settings, stage, "due", N + 1, running)
    assert codes == [0]
    assert stage.made_due and len(stage.aborted_batches) == 1
    assert out[b"due-1"] == 1, "the due output was lost with the aborted transaction"
    assert set(out) == values | {b"due-1"}
    assert all(n == 1 for n in out.values())


def test_at_least_once_acknowledges_only_delivered_batches(
        lepton_env: LeptonSettings, prefix: str,
        running: list[tuple[threading.Thread, threading.Event]]) -> None:
    settings = lepton_env
    stage = EchoStage(prefix, unavailable=2)
    values = _feed(settings, stage.inputs[0], N)
    stop, codes = threading.Event(), []
    runtime = AtLeastOnceRuntime(settings, stage, stop, group_id=f"alo-{uuid.uuid4().hex[:6]}",
                                 batch_size=64, poll_timeout_s=0.2)
    thread = _start(runtime, stop, codes, running)
    _committed(stage, N)
    out = _outputs(settings, stage.outputs[0], N)
    assert set(out) == values
    stop.set()
    thread.join(20)
    assert codes == [0]
    assert stage.committed_records == N


def test_a_finished_runtime_is_freed_with_its_clients_without_a_gc_pass(
        lepton_env: LeptonSettings, prefix: str) -> None:
    """The consumer holds the runtime's rebalance callbacks; were the runtime to keep its
    clients after `run()`, that cycle would keep its producer reconnecting to a stopped broker
    until some later gc pass (the suite's tail once showed one). Reference counting alone frees
    a finished runtime."""
    stage = EchoStage(prefix)
    _feed(lepton_env, stage.inputs[0], 5)
    stop = threading.Event()
    runtime = _transactional(lepton_env, stage, stop, f"free-{uuid.uuid4().hex[:6]}")
    gc.disable()
    try:
        thread = threading.Thread(target=runtime.run, daemon=True)
        thread.start()
        _committed(stage, 5)
        stop.set()
        thread.join(20)
        assert not thread.is_alive()
        freed = weakref.ref(runtime)
        del runtime
        assert freed() is None
    finally:
        gc.enable()


class RedeliveredStage(EchoStage):
    """An echo whose consumer is sent back to offset 0 while its second batch is processed:
    what librdkafka does when it re-delivers records around a rebalance."""

    def __init__(self, prefix: str) -> None:
        super().__init__(prefix)
        self.runtime: TransactionalRuntime | None = None
        self.calls = 0

    def process(self, batch: list[Message]) -> list[Output]:
        self.calls += 1
        if self.calls == 2:
            assert self.runtime is not None
            for source in next_offsets(batch):
                self.runtime.consumer.seek(TopicPartition(*source, 0))
        return super().process(batch)


def test_records_delivered_again_are_not_processed_again(
        lepton_env: LeptonSettings, prefix: str,
        running: list[tuple[threading.Thread, threading.Event]],
        caplog: pytest.LogCaptureFixture) -> None:
    settings = lepton_env
    stage = RedeliveredStage(prefix)
    values = _feed(settings, stage.inputs[0], N)
    stop, codes = threading.Event(), []
    runtime = _transactional(settings, stage, stop, f"again-{uuid.uuid4().hex[:6]}")
    stage.runtime = runtime
    with caplog.at_level(logging.WARNING, logger="shared.stage.fence"):
        thread = _start(runtime, stop, codes, running)
        _committed(stage, N)
        out = _outputs(settings, stage.outputs[0], N)
        stop.set()
        thread.join(20)
    assert codes == [0]
    assert set(out) == values
    assert all(n == 1 for n in out.values()), "an output committed twice"
    assert all(n == 1 for n in stage.processed.values()), "a record processed twice"
    assert "already processed here" in caplog.text  # the re-delivery did happen


def test_outputs_an_unfinished_transaction_left_are_not_produced_again(
        lepton_env: LeptonSettings, prefix: str,
        running: list[tuple[threading.Thread, threading.Event]]) -> None:
    """The embedded broker shows a transaction's records as they arrive: what a replica killed
    before it sent its positions left behind is read back on assignment, not produced again."""
    settings = lepton_env
    stage = EchoStage(prefix)
    values = _feed(settings, stage.inputs[0], N)
    left = [r for r in read_topic(settings, stage.inputs[0], expect=N) if r.offset < 20]
    producer = make_producer(settings)
    for r in left:
        producer.produce(stage.outputs[0], key=r.key, value=r.value,
                         headers=[origin_header(Message(topic=r.topic, partition=r.partition,
                                                        offset=r.offset))])
    assert producer.flush(15) == 0
    out, codes = _run_to_the_end(settings, stage, "left", N, running)
    assert codes == [0]
    assert len(left) >= 40 and sum(stage.processed.values()) == N  # all processed again
    assert set(out) == values
    assert all(n == 1 for n in out.values()), "an output written twice"


def test_a_stale_resume_position_is_raised_to_what_the_replica_committed(
        lepton_env: LeptonSettings, prefix: str,
        running: list[tuple[threading.Thread, threading.Event]],
        caplog: pytest.LogCaptureFixture) -> None:
    """Its positions read back lower than it committed (forged here: older checkpoints
    written last), a replica that is reassigned its partitions resumes where it committed."""
    settings = lepton_env
    group = f"stale-{uuid.uuid4().hex[:6]}"
    stage = EchoStage(prefix)
    values = _feed(settings, stage.inputs[0], N)
    stop, codes = threading.Event(), []
    runtime = _transactional(settings, stage, stop, group)
    with caplog.at_level(logging.WARNING, logger="shared.stage.fence"):
        thread = _start(runtime, stop, codes, running)
        _committed(stage, N)
        positions = InputPositions(settings, runtime.positions_topic, group)
        producer = make_producer(settings)
        for partition, key, value in positions.records(
                {(stage.inputs[0], p): 0 for p in range(4)}):
            producer.produce(positions.topic, key=key, value=value, partition=partition)
        assert producer.flush(15) == 0
        positions.close()
        _rebalance(settings, group, stage.inputs[0])
        more = _feed(settings, stage.inputs[0], N // 2, start=N)
        _committed(stage, N + N // 2)
        out = _outputs(settings, stage.outputs[0], N + N // 2)
        stop.set()
        thread.join(20)
    assert codes == [0]
    assert set(out) == values | more
    assert all(n == 1 for n in out.values()), "an output committed twice"
    assert all(n == 1 for n in stage.processed.values()), "a record processed twice"
    assert "below the position" in caplog.text  # the stale positions were read


def test_an_idle_partition_keeps_its_checkpoint_at_the_tail_of_the_positions_topic(
        lepton_env: LeptonSettings, prefix: str,
        running: list[tuple[threading.Thread, threading.Event]]) -> None:
    """A partition that receives nothing more has its committed position written again every
    `position_refresh_s`, at the same value, so a resume reading the positions topic backwards
    finds it near the end; what it resumes from is unchanged."""
    settings = lepton_env
    group = f"refresh-{uuid.uuid4().hex[:6]}"
    stage = EchoStage(prefix)
    producer = make_producer(settings)
    for i in range(40):
        producer.produce(stage.inputs[0], value=f"r{i}".encode(), partition=i % 4)
    assert producer.flush(15) == 0
    stop, codes = threading.Event(), []
    runtime = _transactional(settings, stage, stop, group, position_refresh_s=0.5)
    thread = _start(runtime, stop, codes, running)
    _committed(stage, 40)
    time.sleep(3.0)  # idle: only the refreshes are committed
    stop.set()
    thread.join(20)
    assert codes == [0]

    positions = InputPositions(settings, runtime.positions_topic, group)
    sources = [(stage.inputs[0], p) for p in range(4)]
    written: dict[bytes, list[int]] = {positions.key(s): [] for s in sources}
    for record in read_topic(settings, positions.topic, idle=1.0):
        if record.key in written:
            written[record.key].append(int(orjson.loads(record.value)["offset"]))
    for key, offsets in written.items():
        assert len(offsets) >= 3, (key, offsets)  # the batch's checkpoint, then refreshes
        assert set(offsets) == {10}, (key, offsets)
    assert {s: o for s, (o, _) in positions.load(sources).items()} == dict.fromkeys(sources, 10)
    positions.close()


def _rebalance(settings: LeptonSettings, group: str, topic: str) -> None:
    """Join `group` with a second member until it is assigned partitions, then leave: the
    running replica has its partitions revoked and assigned again."""
    assigned = threading.Event()
    member = make_consumer(settings, group)
    member.subscribe([topic], on_assign=lambda _c, parts: assigned.set() if parts else None)
    deadline = time.monotonic() + 60
    while not assigned.is_set():
        assert time.monotonic() < deadline, "the second member was never assigned a partition"
        member.poll(0.2)
    member.close()
