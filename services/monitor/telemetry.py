"""The monitor's instruments: `lepton.monitor.drift{model,version,feature}` (the test statistic
or distance of the latest window), `.drift.detected` (0/1), live `.live.f1`, `.live.roc_auc`,
`.live.labelled`, records and labels counters, and `.scale.replicas{service}` (the advice)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

Labels = tuple[tuple[str, str], ...]


class MonitorMetrics:
    """Counters and the gauges' current values (read by the SDK's callbacks)."""

    def __init__(self) -> None:
        meter = metrics.get_meter("lepton.monitor")
        self.records = meter.create_counter(
            "lepton.monitor.records", unit="{record}",
            description="Records consumed, by topic and outcome")
        self.joined = meter.create_counter(
            "lepton.monitor.labels.joined", unit="{label}",
            description="Labels joined to their prediction")
        self.decisions = meter.create_counter(
            "lepton.monitor.decisions", unit="{decision}",
            description="Signed drift_detected / quality_degraded decisions sent")
        self.values: dict[str, dict[Labels, float]] = {}
        for name, unit, text in (
                ("lepton.monitor.drift", "1", "Drift statistic of the latest window "
                 "(KS D, chi-square, normed Wasserstein or Jensen-Shannon distance)"),
                ("lepton.monitor.drift.detected", "1", "1 when the latest window drifted"),
                ("lepton.monitor.live.f1", "1", "Live F1 over the latest labelled predictions"),
                ("lepton.monitor.live.roc_auc", "1", "Live ROC AUC"),
                ("lepton.monitor.live.labelled", "{prediction}", "Labelled predictions kept"),
                ("lepton.monitor.scale.replicas", "{replica}",
                 "Recommended replicas per service (fewest that keep lag bounded)")):
            self.values[name] = {}
            meter.create_observable_gauge(name, callbacks=[self._observe(name)], unit=unit,
                                          description=text)

    def set(self, name: str, value: float, **labels: str | int) -> None:
        """Set a gauge's current value for `labels`."""
        key = tuple(sorted((k, str(v)) for k, v in labels.items()))
        self.values[name][key] = value

    def _observe(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(v, dict(k)) for k, v in list(self.values[name].items())]
        return observe
