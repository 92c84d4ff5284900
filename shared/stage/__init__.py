"""The one stage runtime: every consume → process → produce service supplies a `Stage` (its
`process(batch)`), and a runtime owns the clients, the loop, commits, retries and stopping.

- `TransactionalRuntime` (ingest, governance): exactly once, outputs + input positions +
  offsets in one Kafka transaction per batch.
- `AtLeastOnceRuntime` (serving's Kafka path): produce, flush, acknowledge, then commit.
- `run_service` is the entry every service's `__main__` calls.
"""

from shared.stage.at_least_once import AtLeastOnceRuntime
from shared.stage.model import Fenced, Output, Stage, next_offsets
from shared.stage.service import run_service
from shared.stage.transactional import TransactionalRuntime

__all__ = ["AtLeastOnceRuntime", "Fenced", "Output", "Stage", "TransactionalRuntime",
           "next_offsets", "run_service"]
