"""Dynamic batching: concurrent requests share one forward pass, a full batch flushes at
once, and requests whose callers gave up are not scored."""

from __future__ import annotations

import asyncio

from services.serving.batching import Batcher
from tests.unit.serving.models import loaded
from tests.unit.serving.support import record


def test_concurrent_requests_share_a_batch_and_match_single_scores() -> None:
    model = loaded(1)
    records = [model.schema.clean(record(i)) for i in range(10)]
    expected = model.score(records).tolist()

    async def run() -> tuple[list[float], Batcher]:
        batcher = Batcher(max_size=64, max_wait_s=0.01)
        scores = await asyncio.gather(*(batcher.submit(model, r) for r in records))
        return list(scores), batcher

    scores, batcher = asyncio.run(run())
    assert scores == expected
    assert (batcher.batches, batcher.rows) == (1, 10)


def test_full_batch_flushes_without_waiting_and_cancelled_are_skipped() -> None:
    model = loaded(1)
    records = [model.schema.clean(record(i)) for i in range(4)]

    async def run() -> Batcher:
        batcher = Batcher(max_size=3, max_wait_s=30.0)
        gone = asyncio.ensure_future(batcher.submit(model, records[0]))
        await asyncio.sleep(0)
        gone.cancel()
        results = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(model, r) for r in records[1:3])), timeout=5)
        assert len(results) == 2
        return batcher

    batcher = asyncio.run(run())
    assert (batcher.batches, batcher.rows) == (1, 2)
