"""Liveness of a service's main loop, for healthchecks that must catch a hung process.

The metrics endpoint is served by the metrics library's own thread, so it answers while the
main loop is stuck. Each loop therefore calls `Heartbeat.beat()` every time it turns (and while
it waits out an outage with retries), and the gauge `lepton.<service>.loop.heartbeat` (Unix
seconds of the last beat; Prometheus: `lepton_<service>_loop_heartbeat_seconds`) goes stale when
it stops. `lepton probe http URL --stale-after S` fails when it is older than S seconds.

"Hung" means: the loop has not turned for S seconds because a call never returns (a deadlock,
a blocking call without a timeout, an endless computation). Waiting for a broker or Redis that
is down is not hung: those waits retry and beat, since a restart would not help.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, Observation

# the Prometheus sample name every heartbeat gauge ends with (what the probe looks for)
HEARTBEAT_SUFFIX = "_loop_heartbeat_seconds"


class Heartbeat:
    """The gauge `lepton.<service>.loop.heartbeat`: nothing until the first beat."""

    def __init__(self, service: str, meter: Meter | None = None) -> None:
        self.last: float | None = None
        meter = meter or metrics.get_meter(f"lepton.{service}")
        meter.create_observable_gauge(
            f"lepton.{service}.loop.heartbeat", callbacks=[self._observe], unit="s",
            description="Unix time the main loop last turned (stale: the loop is hung)")

    def beat(self) -> None:
        """The loop turned (or is waiting out an outage): it is alive now."""
        self.last = time.time()

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [] if self.last is None else [Observation(self.last)]
