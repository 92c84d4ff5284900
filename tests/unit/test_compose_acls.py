"""deploy/kafka/acls.sh (the SASL ACL example) against the code: every topic it names is in the
topic registry, every topic has a writer and a reader, each service is granted exactly the
topics its code names (its modules and the shared modules they import; stage inputs read,
stage outputs written, positions topics both), operators at least what their commands name, and
the consumer-group and transactional-id prefixes cover what the services derive."""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from services.governance.config import GovernanceSettings
from services.ingest.config import IngestSettings
from services.serving.config import ServingSettings
from services.trainer.config import TrainerSettings
from shared.topics import Topic, Topics

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "lepton."
SERVICES = ("ingest", "governance", "trainer", "serving", "monitor", "federation")
# what a service reads that its code names only at run time: the monitor's scaling advice reads
# the input and positions topics every running consumer records in Redis (services/monitor/lag.py)
DYNAMIC_READS = {"monitor": {"events.raw", "events.clean", "audit.requests",
                             "predictions.requests", "ingest.offsets", "governance.offsets"}}
# Topics' properties (topics.raw, self.topics.audit_log …) by the topic they name
PROPERTIES = {name: Topic(getattr(Topics(""), name)) for name, value in vars(Topics).items()
              if isinstance(value, property)}


@dataclass(frozen=True)
class Grant:
    """One `grant` line of acls.sh."""

    reads: frozenset[str]
    writes: frozenset[str]
    group: str
    txn: str


@cache
def _grants() -> dict[str, Grant]:
    text = (ROOT / "deploy/kafka/acls.sh").read_text().replace("\\\n", " ")
    grants = {}
    for line in text.splitlines():
        if line.startswith("grant "):
            user, reads, writes, group, txn = shlex.split(line)[1:]
            grants[user] = Grant(frozenset(reads.split()), frozenset(writes.split()),
                                 group.replace("${p}", PREFIX), txn.replace("${p}", PREFIX))
    return grants


def _topic(node: ast.expr, names: dict[str, Topic]) -> Topic | None:
    """The topic an expression names: `Topics(...).x`, `topics.x`, `self.topics.x`,
    `Topic.X`, or `self.attr` assigned one of those in the same module."""
    if not isinstance(node, ast.Attribute):
        return None
    value = node.value
    if node.attr in PROPERTIES and (
            (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
             and value.func.id == "Topics")
            or (isinstance(value, ast.Name) and value.id == "topics")
            or (isinstance(value, ast.Attribute) and value.attr == "topics")):
        return PROPERTIES[node.attr]
    if isinstance(value, ast.Name) and value.id == "Topic" and node.attr in Topic.__members__:
        return Topic[node.attr]
    if isinstance(value, ast.Name) and value.id == "self":
        return names.get(node.attr)
    return None


@dataclass
class Scan:
    """What a set of modules names: every topic, and the stages' inputs and outputs."""

    touched: set[Topic]
    inputs: set[Topic]
    outputs: set[Topic]


def _scan(path: Path) -> Scan:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: dict[str, Topic] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            topic = _topic(node.value, {})
            if isinstance(target, ast.Attribute) and topic is not None:
                names[target.attr] = topic
    scan = Scan(set(), set(), set())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (topic := _topic(node, names)) is not None:
            scan.touched.add(topic)
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Attribute)
                and node.targets[0].attr in ("inputs", "outputs")
                and isinstance(node.value, ast.List)):
            found = {t for e in node.value.elts if (t := _topic(e, names)) is not None}
            assert len(found) == len(node.value.elts), f"{path}: {ast.unparse(node)}"
            (scan.inputs if node.targets[0].attr == "inputs" else scan.outputs).update(found)
    return scan


def _module(name: str) -> Path | None:
    base = ROOT / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _closure(start: list[Path], *, services: bool = True) -> list[Path]:
    """`start` and every shared (and `services`: services) module they import, transitively (a
    service's `__main__`, the entry of another process, is not followed; shared/topics.py, the
    registry that names every topic, is left out)."""
    followed = ("shared", "services") if services else ("shared",)
    seen: dict[Path, None] = {}
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = None
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for module in modules:
                if module.split(".")[0] in followed \
                        and not module.endswith("__main__") \
                        and (found := _module(module)) is not None:
                    todo.append(found)
    return [p for p in seen if p != ROOT / "shared/topics.py"]


def _names(topics: set[Topic]) -> set[str]:
    return {t.value for t in topics}


def test_every_topic_in_the_acls_is_registered_and_every_topic_has_a_writer_and_a_reader(
) -> None:
    grants = _grants()
    registered = {t.value for t in Topic}
    for user, grant in grants.items():
        assert grant.reads | grant.writes <= registered, (user, (grant.reads | grant.writes)
                                                         - registered)
    assert set().union(*(g.writes for g in grants.values())) == registered
    assert set().union(*(g.reads for g in grants.values())) == registered
    assert {f"lepton-{s}" for s in (*SERVICES, "operator")} <= set(grants)


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_is_granted_exactly_what_its_code_reads_and_writes(service: str) -> None:
    grant = _grants()[f"lepton-{service}"]
    own = [p for p in sorted((ROOT / "services" / service).glob("*.py"))
           if not p.name.endswith("cli.py")]  # cli.py, audit_cli.py: the operator's commands
    scans = [_scan(p) for p in _closure(own)]
    touched = set().union(*(s.touched for s in scans))
    assert _names(touched) | DYNAMIC_READS.get(service, set()) == grant.reads | grant.writes
    assert _names(set().union(*(s.inputs for s in scans))) <= grant.reads
    assert _names(set().union(*(s.outputs for s in scans))) <= grant.writes
    positions = {t.value for t in touched if t.value.endswith(".offsets")}
    assert positions <= grant.reads & grant.writes


def test_operators_are_granted_what_their_commands_name() -> None:
    """The commands and the shared modules they import (a command importing one helper from a
    service module does not make that service's topics the operator's)."""
    grant = _grants()["lepton-operator"]
    commands = [*sorted((ROOT / "services").glob("*/*cli.py")), ROOT / "lepton/dlq.py",
                ROOT / "shared/models/announce.py"]  # `lepton models promote|rollback`
    touched = _names(set().union(*(_scan(p).touched
                                   for p in _closure(commands, services=False))))
    assert touched <= grant.reads | grant.writes, touched - grant.reads - grant.writes
    assert {"events.rejected", "events.raw", "models.updates", "audit.requests"} <= touched


def test_group_and_transactional_id_prefixes_cover_what_the_services_derive() -> None:
    grants = _grants()
    ingest, governance = IngestSettings(), GovernanceSettings()
    for settings, user in ((ingest, "lepton-ingest"), (governance, "lepton-governance")):
        assert settings.topic_prefix == PREFIX
        grant = grants[user]
        # the consumer, its positions reader ({group}.positions-reader) and the producer
        assert settings.group_id().startswith(grant.group)
        assert settings.transactional_id().startswith(grant.txn)
    assert TrainerSettings().group_id().startswith(grants["lepton-trainer"].group)
    assert "lepton-trainer-site-a".startswith(grants["lepton-trainer"].group)  # site mode
    assert "lepton-federation-x".startswith(grants["lepton-federation"].group)
    serving = ServingSettings().serving_group
    for group in (f"{serving}-predictions", f"{serving}-models-x"):
        assert group.startswith(grants["lepton-serving"].group)
    assert f"{PREFIX}dlq-cli-x".startswith(grants["lepton-operator"].group)
