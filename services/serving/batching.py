"""Dynamic batching for unary predictions on the event loop: requests for the same model
version queue up until `max_size` are waiting or the oldest has waited `max_wait`, then one
feature transform and one forward pass score them all. With `max_wait` 0 the batch is flushed
at the end of the current event-loop iteration (whatever arrived together is scored together,
adding no latency). Requests whose caller went away (deadline, cancel) are not scored."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from services.serving.model import LoadedModel
from shared.events import Scalar


@dataclass
class _Queue:
    records: list[dict[str, Scalar]] = field(default_factory=list)
    futures: list[asyncio.Future[float]] = field(default_factory=list)
    timer: asyncio.Handle | None = None


class Batcher:
    """Collects single-record requests per model version into one scoring call."""

    def __init__(self, max_size: int, max_wait_s: float) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._queues: dict[LoadedModel, _Queue] = {}
        self.batches = 0
        self.rows = 0

    async def submit(self, model: LoadedModel, record: dict[str, Scalar]) -> float:
        """Score `record` with `model` as part of the next batch; returns its probability."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = _Queue()
        future: asyncio.Future[float] = loop.create_future()
        queue.records.append(record)
        queue.futures.append(future)
        if len(queue.records) >= self.max_size:
            self._flush(model)
        elif queue.timer is None:
            queue.timer = loop.call_later(self.max_wait_s, self._flush, model) \
                if self.max_wait_s > 0 else loop.call_soon(self._flush, model)
        return await future

    def _flush(self, model: LoadedModel) -> None:
        queue = self._queues.pop(model, None)
        if queue is None:
            return
        if queue.timer is not None:
            queue.timer.cancel()
        live = [i for i, f in enumerate(queue.futures) if not f.done()]
        if not live:
            return
        records = [queue.records[i] for i in live] if len(live) < len(queue.records) \
            else queue.records
        try:
            scores = model.score(records)
        except Exception as error:
            for i in live:
                if not queue.futures[i].done():
                    queue.futures[i].set_exception(error)
            return
        self.batches += 1
        self.rows += len(records)
        for i, score in zip(live, scores.tolist(), strict=True):
            if not queue.futures[i].done():
                queue.futures[i].set_result(score)

    def flush_all(self) -> None:
        """Score everything queued now (used at shutdown)."""
        for model in list(self._queues):
            self._flush(model)
