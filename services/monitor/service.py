"""The monitor process: the stage on the shared at-least-once runtime (consumes predictions.log
and events.governed, produces decisions on audit.requests), plus a thread that recomputes the
scaling advice metric (scaling.py) every `monitor_scale_every_s`."""

from __future__ import annotations

import logging
import threading

from services.monitor.config import MonitorSettings
from services.monitor.scaling import ScaleWatch
from services.monitor.stage import MonitorStage
from shared.kafka import ensure_topics
from shared.readiness import clear_ready, mark_ready
from shared.stage import AtLeastOnceRuntime

log = logging.getLogger(__name__)


def run_monitor(settings: MonitorSettings, stop: threading.Event) -> int:
    """Monitor until stopped; the exit status."""
    stage = MonitorStage(settings)
    ensure_topics(settings, [*stage.inputs, *stage.outputs], stop=stop)
    watch = ScaleWatch(settings, stage.metrics, stop)
    watch.start()
    runtime = AtLeastOnceRuntime(settings, stage, stop, group_id=settings.monitor_group,
                                 batch_size=settings.monitor_batch, poll_timeout_s=0.1)
    mark_ready(settings, "monitor")
    log.info("monitor consuming %s", ", ".join(stage.inputs))
    try:
        return runtime.run()
    finally:
        clear_ready(settings, "monitor")
        watch.join(5)
