"""Prometheus alert rules and the Grafana dashboard against what the code emits: every metric
they query exists (sample names from the real SDK and Prometheus exporter), every label they
filter, group or name a legend or summary by is one the code attaches to that metric (attribute
keys read from the instruments' `add`/`record` calls and gauge callbacks), and they cover the
operational signals: lag, dead letters and a stalled loop for every stage, budgets, refused
models, serving latency and errors."""

from __future__ import annotations

import ast
import functools
import json
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from shared.lifecycle import parent_death
from shared.service_record import UNITS

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "governance", "trainer", "serving", "monitor")
CREATE = {"create_counter", "create_histogram", "create_observable_gauge", "create_gauge",
          "create_up_down_counter", "create_observable_counter",
          "create_observable_up_down_counter"}
# added by the scrape (and the collector's exporter), not by the code
SCRAPE_LABELS = {"job", "instance"}


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\blepton_[a-z0-9_]+", expr))


EXPORT_PROBE = """
import json, socket
from prometheus_client import REGISTRY
from shared.tracing import setup_telemetry
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]; sock.close()
setup_telemetry("probe", metrics_port=port)
from opentelemetry.metrics import Counter, Histogram
from services.ingest.telemetry import IngestMetrics
from services.governance.telemetry import GovernanceMetrics
from services.trainer.telemetry import TrainerMetrics
import services.serving.predictor, services.serving.control, services.serving.prediction_log
import services.serving.request_metrics, services.serving.kafka_path
from services.monitor.telemetry import MonitorMetrics
from shared.stage.metrics import StageMetrics
stages = [StageMetrics(name) for name in ("ingest", "governance", "serving", "monitor")]
trainer = TrainerMetrics()
for stage in stages:
    stage.lag[("topic", 0)] = 1
    stage.heartbeat.beat()
trainer.lag.lag[("topic", 0)] = 1
trainer.heartbeat.beat()
governance = GovernanceMetrics()
governance.set_budget("d", 1.0, 2.0)
governance.set_subject_max("d", 0.5)
monitor = MonitorMetrics()
for name in monitor.values:
    monitor.set(name, 1.0, model="m", version=1, feature="f", service="s")
ingest = IngestMetrics()
ingest.latest = {"d": {"quality_index": 0.99, "sum_error_rate": 0.16, "min_index": 0.95}}
objects = [ingest, governance, trainer, monitor, *stages]
for module in (services.serving.predictor, services.serving.control,
               services.serving.prediction_log, services.serving.request_metrics,
               services.serving.kafka_path):
    objects.append(module)
for obj in objects:
    for value in vars(obj).values():
        if isinstance(value, Counter):
            value.add(1)
        elif isinstance(value, Histogram):
            value.record(0.01)
from services.serving.router import Route
services.serving.predictor._predictions.add(1, "m", 1, Route.LIVE)  # an observable counter
names = {s.name for m in REGISTRY.collect() for s in m.samples if s.name.startswith("lepton_")}
print(json.dumps(sorted(names)))
"""


@functools.cache
def _exported_metrics() -> set[str]:
    """Every Prometheus sample name the services' instruments produce (from the real SDK)."""
    result = subprocess.run([sys.executable, "-c", EXPORT_PROBE], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=False, preexec_fn=parent_death())
    assert result.returncode == 0, result.stderr[-3000:]
    names: set[str] = set(json.loads(result.stdout.splitlines()[-1]))
    return names


def _instrument_names(call: ast.Call) -> list[str]:
    """The names a create_* call registers (an f-string name, as the stage runtime's
    f"lepton.{stage}.batch.size", stands for every stage)."""
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr):
        template = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in arg.values)
        if template.count("{}") == 2:  # lepton.{service}.energy.joules_per_{unit}
            return [template.format(stage, UNITS.get(stage, "event")) for stage in STAGES]
        return [template.format(stage) for stage in STAGES]
    return []


def _dict_keys(node: ast.expr | None) -> set[str] | None:
    if not isinstance(node, ast.Dict):
        return None
    return {k.value.replace(".", "_") for k in node.keys
            if isinstance(k, ast.Constant) and isinstance(k.value, str)}


@functools.cache
def _emitted_labels() -> dict[str, set[str]]:
    """Prometheus base name (lepton_ingest_events_rejected) → the label names the code gives
    its points: the attribute-dict keys of `<instrument>.add/record(value, {...})` calls and of
    `Observation(value, {...})` in gauge callbacks, resolved within each package."""
    trees = {p: ast.parse(p.read_text(), filename=str(p))
             for p in [*ROOT.glob("services/*/*.py"), *ROOT.glob("shared/**/*.py")]}

    def package(path: Path) -> str:
        return path.parent.name if path.parent.parent.name == "services" else "shared"

    # per package: the variable or attribute an instrument is kept in, and each gauge callback
    # method, to the instrument names
    holders: dict[str, dict[str, list[str]]] = defaultdict(dict)
    callbacks_of: dict[tuple[Path, str], list[str]] = {}  # gauge callbacks, in their own file
    labels: dict[str, set[str]] = {}
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in CREATE and node.args):
                continue
            names = _instrument_names(node)
            for name in names:
                labels.setdefault(name, set())
            callbacks = [k.value for k in node.keywords if k.arg == "callbacks"]
            callbacks += node.args[1:2]  # create_observable_*(name, callbacks, ...)
            for listed in callbacks:
                for callback in listed.elts if isinstance(listed, ast.List) else []:
                    if isinstance(callback, ast.Call):  # self._gauge("key"): a callback factory
                        callback = callback.func
                    if isinstance(callback, ast.Attribute):  # one factory may feed several
                        callbacks_of.setdefault((path, callback.attr), []).extend(names)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                    and isinstance(node.value.func, ast.Attribute)
                    and node.value.func.attr in CREATE):
                target = node.targets[0]
                key = target.attr if isinstance(target, ast.Attribute) else \
                    target.id if isinstance(target, ast.Name) else None
                if key is not None:
                    holders[package(path)][key] = _instrument_names(node.value)
    for path, tree in trees.items():
        known = {**holders["shared"], **holders[package(path)]}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("add", "record")):
                holder = node.func.value
                key = holder.attr if isinstance(holder, ast.Attribute) else \
                    holder.id if isinstance(holder, ast.Name) else None
                attributes = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "attributes"), None)
                keys = _dict_keys(attributes)
                if key in known and keys is not None:
                    for name in known[key]:
                        labels[name] |= keys
            elif isinstance(node, ast.FunctionDef) and (path, node.name) in callbacks_of:
                for call in ast.walk(node):
                    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                            and call.func.id == "Observation" and len(call.args) > 1
                            and (keys := _dict_keys(call.args[1])) is not None):
                        for name in callbacks_of[(path, node.name)]:
                            labels[name] |= keys
    return {name.replace(".", "_"): keys for name, keys in labels.items()}


def _labels_of(metric: str) -> set[str]:
    """The labels the code gives `metric` (a sample name: base + unit/_total/_bucket …)."""
    emitted = _emitted_labels()
    bases = [b for b in emitted if metric == b or metric.startswith(f"{b}_")]
    assert bases, f"{metric}: no instrument in the code"
    labels = emitted[max(bases, key=len)] | SCRAPE_LABELS
    return labels | {"le"} if metric.endswith("_bucket") else labels


def _check_labels(expr: str, named: str = "") -> None:
    """Every label `expr` filters or groups by, and every label `named` (a legend or a
    summary) refers to, is one the code gives the metrics it reads."""
    metrics = _metric_names(expr)
    for metric, matchers in re.findall(r"\b(lepton_[a-z0-9_]+)\s*\{([^}]*)\}", expr):
        used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
        assert used <= _labels_of(metric), (expr, used - _labels_of(metric))
    grouped = {label.strip() for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
               for label in clause.split(",") if label.strip()}
    for metric in metrics:
        allowed = _labels_of(metric) | ({"le"} if any(m.endswith("_bucket") for m in metrics)
                                        else set())
        assert grouped <= allowed, (expr, metric, grouped - allowed)
    referred = set(re.findall(r"\{\{\s*(?:\$labels\.)?(\w+)\s*\}\}", named)) - {"value"}
    if referred:
        available = grouped if grouped else set.intersection(*map(_labels_of, metrics))
        assert referred <= available, (expr, named, referred - available)


def test_alert_rules_are_valid_and_cover_the_operational_signals() -> None:
    path = ROOT / "deploy/prometheus/alerts.yml"
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                                text=True, check=False, preexec_fn=parent_death())
        assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load(path.read_text())
    seen = set()
    for group in rules["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"] and rule["expr"].strip()
            assert rule["labels"]["severity"] in ("warning", "critical")
            assert rule["annotations"]["summary"]
            assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
            _check_labels(rule["expr"], rule["annotations"]["summary"])
            seen |= _metric_names(rule["expr"])
    assert _exported_metrics() >= seen, seen - _exported_metrics()
    for needed in ("lepton_ingest_events_rejected_total", "lepton_ingest_quality_index",
                   "lepton_ingest_quality_min_index", "lepton_governance_rejected_total",
                   "lepton_trainer_records_total", "lepton_serving_requests_rejected_total",
                   "lepton_governance_budget_remaining", "lepton_serving_models_refused_total",
                   "lepton_serving_request_duration_seconds_bucket",
                   "lepton_serving_request_duration_seconds_count",
                   *(f"lepton_{stage}_consumer_lag" for stage in STAGES),
                   *(f"lepton_{stage}_loop_heartbeat_seconds" for stage in STAGES)):
        assert needed in seen, needed


def test_grafana_dashboard_queries_metrics_and_labels_that_exist() -> None:
    provisioning = ROOT / "deploy/grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards/lepton.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/lepton.json").read_text())
    names: set[str] = set()
    panels: dict[str, set[str]] = {}
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid
        panels[panel["title"]] = set()
        for target in panel["targets"]:
            found = _metric_names(target["expr"])
            assert found, target["expr"]
            _check_labels(target["expr"], target.get("legendFormat", ""))
            panels[panel["title"]] |= found
            names |= found
    assert _exported_metrics() >= names, names - _exported_metrics()
    for topic in ("Stages", "lag", "Dead letters", "Privacy budget", "Models", "Serving latency",
                  "heartbeat"):
        assert any(topic in title for title in panels), topic
    lag = next(found for title, found in panels.items() if "lag" in title)
    assert lag == {f"lepton_{stage}_consumer_lag" for stage in STAGES}
    letters = next(found for title, found in panels.items() if "Dead letters" in title)
    assert letters == {"lepton_ingest_events_rejected_total", "lepton_governance_rejected_total",
                       "lepton_trainer_records_total", "lepton_serving_requests_rejected_total"}
    # ε: the largest subject's, never a sum across releases or subjects
    budget = next(title for title in panels if "Privacy budget" in title)
    assert "lepton_governance_subject_epsilon_max" in panels[budget]
    assert "lepton_trainer_epsilon_charged_total" not in names


def test_the_label_reader_sees_what_the_code_attaches() -> None:
    labels = _emitted_labels()
    assert labels["lepton_serving_request_duration"] == {"rpc_method", "rpc_grpc_status_code"}
    assert labels["lepton_governance_decisions"] == {"kind", "reason"}
    assert labels["lepton_ingest_consumer_lag"] == {"topic", "partition"}
    assert labels["lepton_trainer_consumer_lag"] == {"topic", "partition"}
    assert labels["lepton_governance_subject_epsilon_max"] == {"dataset"}
    assert labels["lepton_trainer_versions"] == {"status"}
    assert labels["lepton_ingest_loop_heartbeat"] == set()
