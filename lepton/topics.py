"""`lepton topics create|check`: make every platform topic exist with its settings (partitions,
replication, compaction for positions checkpoints, retention for audit.log) on a real cluster,
and verify them. The embedded broker cannot create topics (it has no controller); both commands
say so there instead of waiting.

Verified here: the request `create` builds (tests/unit/test_topics_cli.py inspects its
NewTopic objects), its clear exit 2 against the embedded broker, and `check`'s existence and
partition checks. Not verified here (no real Kafka on these machines): a CreateTopics round trip
against a real controller, and `check`'s config comparison (DescribeConfigs), which the
embedded broker does not answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from shared.config import LeptonSettings
from shared.topics import Topic, Topics, topic_spec

DEFAULT_PARTITIONS = 4
TIMEOUT_S = 10.0
NO_CONTROLLER = ("the broker answered no admin request (no controller): the embedded broker "
                 "(`lepton broker`) cannot create or describe topics; it auto-creates each "
                 "topic with 4 partitions on first use and ignores topic configs")

app = typer.Typer(help="Create and verify the platform's Kafka topics.", no_args_is_help=True)


@dataclass(frozen=True)
class Planned:
    """One topic as `topics create` would make it."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str]

    def describe(self) -> str:
        """One line: name, partitions, replication, configs."""
        rf = "broker default" if self.replication < 0 else str(self.replication)
        configs = ", ".join(f"{k}={v}" for k, v in sorted(self.configs.items()))
        return f"{self.name}: partitions={self.partitions} replication={rf} {configs}"


def plan(settings: LeptonSettings, partitions: int, replication: int) -> list[Planned]:
    """Every platform topic with the settings it should have."""
    topics = Topics(settings.topic_prefix)
    return [Planned(topics.name(t), partitions, replication, topic_spec(t).configs())
            for t in Topic]


def new_topics(planned: list[Planned]) -> list[Any]:
    """The CreateTopics request `topics create` sends: one NewTopic per planned topic."""
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    return [NewTopic(t.name, t.partitions, t.replication, config=dict(t.configs))
            for t in planned]


def _admin(settings: LeptonSettings) -> Any:
    from confluent_kafka.admin import AdminClient

    from shared.kafka import client_config

    return AdminClient(client_config(settings, log_level=3))


def _no_controller(error: Exception) -> bool:
    return "controller" in str(error).lower()


@app.command()
def create(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan only.")] = False,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions per topic.")]
    = DEFAULT_PARTITIONS,
    replication: Annotated[int, typer.Option(min=-1, help="Replication factor (-1: broker "
                                                          "default).")] = -1,
) -> None:
    """Create every topic with its settings; existing topics are left as they are and checked."""
    from confluent_kafka import KafkaError, KafkaException

    from shared.config import load_settings

    settings = load_settings(LeptonSettings)
    planned = plan(settings, partitions, replication)
    for topic in planned:
        typer.echo(("would create " if dry_run else "") + topic.describe())
    if dry_run:
        return
    admin = _admin(settings)  # must outlive the futures
    futures = admin.create_topics(new_topics(planned), request_timeout=TIMEOUT_S)
    failed = 0
    for name, future in futures.items():
        try:
            future.result()
            typer.echo(f"created {name}")
        except KafkaException as error:
            kafka_error = error.args[0]
            if kafka_error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                typer.echo(f"exists {name}")
            elif _no_controller(error):
                typer.echo(f"error: {NO_CONTROLLER}; use `lepton topics check`", err=True)
                raise typer.Exit(2) from None
            else:
                failed += 1
                typer.echo(f"error: {name}: {kafka_error.str()}", err=True)
    if failed:
        raise typer.Exit(1)
    _check(settings, planned, configs=True)


@app.command()
def check() -> None:
    """Verify every topic exists, and (where the broker tells) its configs; 1 when not."""
    from shared.config import load_settings

    settings = load_settings(LeptonSettings)
    _check(settings, plan(settings, DEFAULT_PARTITIONS, -1), configs=True)


def _check(settings: LeptonSettings, planned: list[Planned], *, configs: bool) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin._config import ConfigResource

    from shared.kafka.clients import error_text

    admin = _admin(settings)
    metadata = admin.list_topics(timeout=TIMEOUT_S)
    problems = []
    for topic in planned:
        info = metadata.topics.get(topic.name)
        if info is None or info.error is not None or not info.partitions:
            problems.append(f"{topic.name}: missing")
            continue
        replicas = min(len(p.replicas) for p in info.partitions.values())
        typer.echo(f"ok {topic.name}: partitions={len(info.partitions)} replicas={replicas}")
    if configs and not problems:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, t.name) for t in planned]
        futures = admin.describe_configs(resources, request_timeout=TIMEOUT_S)
        wanted = {t.name: t.configs for t in planned}
        for resource, future in futures.items():
            try:
                actual = {k: v.value for k, v in future.result().items()}
            except KafkaException as error:
                if _no_controller(error):
                    typer.echo(f"warning: configs not verified: {NO_CONTROLLER}", err=True)
                    break
                problems.append(f"{resource.name}: {error_text(error)}")
                continue
            for key, value in wanted[resource.name].items():
                if actual.get(key) != value:
                    problems.append(f"{resource.name}: {key}={actual.get(key)} (want {value})")
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        typer.echo("run `lepton topics create` (topics) or fix the configs shown", err=True)
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    """Add `lepton topics` to the command line."""
    root.add_typer(app, name="topics")
